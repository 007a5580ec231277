"""Errors a user can meet, each with a message that stands on its own as one or a few lines.

The CLI prints `error: <message>` for an `RlvrError` and exits with its `exit_code`; any other
exception is a bug (or a library's raw error) and is shown in one line too, with the full
traceback only under `rlvr --debug`.

    ConfigError      (config/load.py)  the recipe is wrong; exit 2, nothing ran
    CheckpointError  a checkpoint folder is broken or unreadable; exit 1
    RunStopped       the run stopped on purpose (signal, alarm, non-finite updates) after
                     saving what it could; exit code says why (see the subclasses)
"""

from __future__ import annotations


class RlvrError(Exception):
    """An error whose message is written for the user; `exit_code` is what `rlvr` exits with."""

    exit_code = 1


class CheckpointError(RlvrError):
    """A checkpoint is missing files, truncated, or fails its manifest check."""


class RunStopped(RlvrError):
    """Training stopped before run.steps on purpose; the message says why and what was saved."""

    exit_code = 3
