"""`python -m semmae.masks`: an alias of semmae.cli.masks, where the `semmae-masks` entry point lives."""

from semmae.cli.masks import main

if __name__ == "__main__":
    main()
