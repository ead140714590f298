"""`python -m relulab ...` is the `relulab` command, and `main` here is its console entry point.

The CLI is imported inside `main`, not at the top: multiprocessing's spawned workers (image decoding,
relulab.core.images) re-run the main script's imports, and the console script imports this module; importing the
CLI there would bring torch into every worker (about 1.7 s each).
"""


def main() -> None:
    from relulab.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
