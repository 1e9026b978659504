"""`python -m semmae.pretrain`: an alias of semmae.cli.pretrain, where the `semmae-pretrain` entry point lives."""

from semmae.cli.pretrain import main

if __name__ == "__main__":
    main()
