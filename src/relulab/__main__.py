"""`python -m relulab ...` is the `relulab` command."""
from .cli import main

main()
