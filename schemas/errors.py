"""Error classes that decide a command's exit code.

The CLI maps :class:`UserError` (usage, config or input errors: a bad flag, a config key, a missing path, a
dataset that another build holds) to exit code 2 with one readable line, the quality gate to 1, and anything
else to 3 with the traceback in the run's log file. Library code raises a subclass of ``UserError`` only
when the fix is on the user's side; a bug must never be dressed up as one.
"""

from __future__ import annotations


class UserError(Exception):
    """Usage, config or input error: the message is one line that names the flag, key or path (exit 2)."""


class InputError(UserError, ValueError):
    """A bad input or usage the user can fix (DATA inside RAW, an unreadable query file, a wrong --from): exit 2.

    Also a ``ValueError``, so callers that caught the ValueError raised before keep working."""


class MissingInputError(UserError, FileNotFoundError):
    """Something a command needs is not there (no built dataset, no trained model, no index): exit 2.

    Also a ``FileNotFoundError``; the message names the path and what to run first."""
