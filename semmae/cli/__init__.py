"""The console scripts, one module each (semmae-pretrain -> semmae.cli.pretrain, ...; semmae-report ->
semmae.cli.sweep_report), and what turns a task function into one (entry: Hydra composes the config; a user error
is one line and exit code 2). `python -m semmae.<name>` still works: semmae/<name>.py is a thin alias."""

from semmae.cli.entry import hydra_entry, is_user_error, one_line, report_and_exit, task_wrapper

__all__ = ["hydra_entry", "is_user_error", "one_line", "report_and_exit", "task_wrapper"]
