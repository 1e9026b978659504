"""`python -m semmae.report`: an alias of semmae.cli.sweep_report, where the `semmae-report` entry point lives."""

from semmae.cli.sweep_report import main

if __name__ == "__main__":
    main()
