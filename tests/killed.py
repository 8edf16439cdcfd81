"""Run a command that a fault injection kills, in its own session, and clean up what it orphaned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def run_to_its_kill(cmd: list[str], env: dict[str, str], cwd: Path, out: Path, timeout: float = 600) -> int:
    """Run ``cmd`` to its end (a fault injection SIGKILLs it) and return its exit status.

    Its own session, so helpers it orphaned (a loader's forkserver) are killed with its process group after;
    stdout and stderr go to the file ``out``, because an orphan holding a pipe open would keep a reader waiting.
    """
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
