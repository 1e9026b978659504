"""`python -m semmae.analyze`: an alias of semmae.cli.analyze, where the `semmae-analyze` entry point lives."""

from semmae.cli.analyze import main

if __name__ == "__main__":
    main()
