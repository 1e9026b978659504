"""`python -m semmae.finetune`: an alias of semmae.cli.finetune, where the `semmae-finetune` entry point lives."""

from semmae.cli.finetune import main

if __name__ == "__main__":
    main()
