"""`python -m semmae.export`: an alias of semmae.cli.export, where the `semmae-export` entry point lives."""

from semmae.cli.export import main

if __name__ == "__main__":
    main()
