"""Error classes that decide a command's exit code.

The CLI maps :class:`UserError` (usage, config or input errors: a bad flag, a config key, a missing path, a
dataset that another build holds) to exit code 2 with one readable line, the quality gate to 1, and anything
else to 3 with the traceback in the run's log file. Library code raises a subclass of ``UserError`` only
when the fix is on the user's side; a bug must never be dressed up as one.
"""

from __future__ import annotations


class UserError(Exception):
    """Usage, config or input error: the message is one line that names the flag, key or path (exit 2)."""
