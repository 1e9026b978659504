"""`python -m semmae.segment`: an alias of semmae.cli.segment, where the `semmae-segment` entry point lives."""

from semmae.cli.segment import main

if __name__ == "__main__":
    main()
