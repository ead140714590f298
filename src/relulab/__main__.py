"""`python -m relulab ...` is the `relulab` command."""
from relulab.cli import main

main()
