"""`python -m semmae.linprobe`: an alias of semmae.cli.linprobe, where the `semmae-linprobe` entry point lives."""

from semmae.cli.linprobe import main

if __name__ == "__main__":
    main()
