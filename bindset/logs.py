"""Logging of one `bindset` command: a quiet console for people, a full log file for operators.

    bindset build RAW DATA          # console: progress bar, summary, warnings to act on
    bindset build -v RAW DATA       # console also shows bindset's INFO lines; -vv: DEBUG and third-party lines
    bindset build -q RAW DATA       # console: errors and the summary only (-v/-q follow the command's name)

Where things go:

* Library code logs with ``logging.getLogger(__name__)``. bindset's own loggers (the packages in
  :data:`OWN`) reach the console at WARNING (``-v`` INFO, ``-vv`` DEBUG, ``-q`` ERROR).
* Everything, third-party libraries included (Apache Beam, Ray, Great Expectations, Airflow, urllib3, absl,
  ...), goes at INFO (``-vv``: DEBUG) to the run's log file. Third-party records reach the console only
  with ``-vv``. Python ``warnings`` are captured into the log (``logging.captureWarnings``).
* File descriptor 2 (stderr) of the process is pointed at the log file for the duration of the command, so
  the output of child processes (Beam's DirectRunner workers inherit it), C libraries (FFmpeg) and code
  that prints to ``sys.stderr`` lands in the log too. The console keeps a duplicate of the original
  stderr: progress bars, console log lines and the CLI's error line are written there. Not done with
  ``-vv`` (everything stays on the terminal) or where stderr is not the process's fd 2 (e.g. under
  pytest's capture).

The log file: ``DATA/_work/logs/`` for build, validate and report; ``RUN/logs/`` for train and embed;
``EMB/_logs/`` for eval; a ``bindset-logs`` folder in the system temp dir for synth, schema and search
(they have no output folder of their own that is not the user's input); ``--log-file`` overrides all.
File names are ``<command>-<UTC time>-<pid>.log``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

# the environment variable that tells engines stderr is the run's log: defined by the engine that reads it
from pipelines.ray_start import LOG_FILE_ENV

#: top-level packages whose loggers are bindset's own (everything else is third-party)
OWN = ("bindset", "pipelines", "transforms", "schemas", "training", "orchestration", "__main__")
#: third-party loggers and the level they log to the file at (-vv: DEBUG for all). INFO for the engines and
#: most; Great Expectations' INFO is hundreds of lines of its own import-time bookkeeping per validation.
THIRD_PARTY = {
    **dict.fromkeys(("apache_beam", "ray", "airflow", "urllib3", "absl", "py.warnings", "fsspec", "torch", "open_clip",
                     "faiss", "grpc"), logging.INFO),
    **dict.fromkeys(("filelock", "PIL", "matplotlib", "great_expectations"), logging.WARNING),
}  # fmt: skip
#: loggers that write request headers, signed URLs or tokens at DEBUG (botocore's endpoint/auth/hooks dump
#: ``Authorization`` and ``X-Amz-Security-Token``; urllib3 logs URLs, which may be pre-signed): kept at INFO
#: even with -vv, so no credential reaches the console or the log file at any verbosity
CREDENTIAL_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "google.auth",
                      "google_auth_httplib2", "oauthlib", "requests_oauthlib")  # fmt: skip
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s: %(message)s"


def console_level(verbose: int, quiet: bool) -> int:
    """WARNING by default; -v INFO; -vv DEBUG; -q ERROR (quiet wins)."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def temp_log_dir() -> Path:
    return Path(tempfile.gettempdir()) / "bindset-logs"


#: what a folder a command only reads holds when it is what the command expects (any one of them): a RUN
#: given where a RAW was meant must not get a logs/ folder that the next build of that RAW would find
_KIND_MARKS = {"data": ("manifest.json", "_work"), "run": ("model", "checkpoints"), "emb": ("meta.json", "_parts")}

#: command -> (the argument naming its folder, the log folder inside it, whether the command only reads it)
_LOG_HOMES = {
    "build": ("data", "_work/logs", False),
    "validate": ("data", "_work/logs", True),
    "report": ("data", "_work/logs", True),
    "train": ("run", "logs", False),
    "embed": ("run", "logs", True),
    "eval": ("emb", "_logs", True),
}


def default_log_dir(command: str, args) -> Path:
    """Where a command's log file goes (see the module docstring); ``args`` is the parsed namespace.

    A folder the command only reads is used only if it exists and holds what that kind of folder holds
    (``_KIND_MARKS``): a mistyped DATA must stay an input error, not become a new folder holding a log, and a
    RAW given as RUN must not gain a logs/ folder.
    """
    if command not in _LOG_HOMES:
        return temp_log_dir()
    arg, sub, reads_only = _LOG_HOMES[command]
    if "://" in str(getattr(args, arg)):  # an object-store URL (DATA on s3://): no local folder to hold the log
        return temp_log_dir()
    top = Path(getattr(args, arg))
    if reads_only and not (top.is_dir() and any((top / mark).exists() for mark in _KIND_MARKS[arg])):
        return temp_log_dir()
    if command == "build":  # a build refused at once (no RAW, DATA inside RAW) leaves DATA, and RAW, untouched
        raw, data = Path(args.raw).resolve(), top.resolve()
        if not raw.is_dir() or data == raw or raw in data.parents:
            return temp_log_dir()
    return top / sub


def log_file_name(command: str) -> str:
    return f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"


class _OwnOrLoud(logging.Filter):
    """Console filter: bindset's records, plus third-party ones when ``third_party`` (``-vv``)."""

    def __init__(self, third_party: bool):
        super().__init__()
        self.third_party = third_party

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):  # e.g. the traceback of an unexpected error
            return False
        return self.third_party or record.name.split(".", 1)[0] in OWN


@dataclass
class RunLog:
    """The logging of one command: ``console`` is the stream for progress bars and the CLI's own lines."""

    path: Path
    console: TextIO
    _handlers: tuple[logging.Handler, ...] = ()
    _saved_fd: int | None = None
    _saved_levels: tuple = ()


def _open_log(path: Path) -> Path:
    """Create the log file (and its folder); falls back to the temp dir where ``path`` cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path
    except OSError:
        fallback = temp_log_dir() / path.name
        fallback.parent.mkdir(parents=True, exist_ok=True)
        fallback.touch()
        return fallback


def _real_stderr_fd() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return False


@contextmanager
def run_logging(path: Path, verbose: int = 0, quiet: bool = False) -> Iterator[RunLog]:
    """Configure logging for one command and undo it afterwards (in-process callers, tests)."""
    path = _open_log(Path(path))
    level = console_level(verbose, quiet)
    root = logging.getLogger()
    saved_levels = (root.level, [(n, logging.getLogger(n).level) for n in (*THIRD_PARTY, *CREDENTIAL_LOGGERS)])
    console: TextIO = sys.stderr
    saved_fd = None
    if verbose < 2 and _real_stderr_fd():
        sys.stderr.flush()
        saved_fd = os.dup(2)
        console = open(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)  # children (Beam workers) inherit it; C libraries write to it
        os.close(fd)

    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    console_handler = logging.StreamHandler(console)
    console_handler.setLevel(level)
    console_handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    console_handler.addFilter(_OwnOrLoud(third_party=verbose >= 2))
    # handlers that libraries installed at import time (Beam, Ray) would print on their own; put back afterwards
    # (an in-process caller's own handlers, e.g. pytest's log capture)
    earlier_handlers = list(root.handlers)
    for h in earlier_handlers:
        root.removeHandler(h)
    root.addHandler(file_handler)
    root.addHandler(console_handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    for name, lvl in THIRD_PARTY.items():
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else lvl)
    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, THIRD_PARTY.get(name, logging.INFO)))
    logging.captureWarnings(True)
    saved_env = os.environ.get(LOG_FILE_ENV)
    if saved_fd is not None:  # engines may relay worker output to stderr (pipelines/ray_start.py)
        os.environ[LOG_FILE_ENV] = str(path)
    run = RunLog(path, console, (file_handler, console_handler), saved_fd, saved_levels)
    command_line = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    logging.getLogger(__name__).info("%s; log file %s", command_line, path)
    try:
        yield run
    finally:
        logging.captureWarnings(False)
        if saved_env is None:
            os.environ.pop(LOG_FILE_ENV, None)
        else:
            os.environ[LOG_FILE_ENV] = saved_env
        for h in run._handlers:
            root.removeHandler(h)
            h.close()
        for h in earlier_handlers:
            root.addHandler(h)
        root.setLevel(saved_levels[0])
        for name, lvl in saved_levels[1]:
            logging.getLogger(name).setLevel(lvl)
        if saved_fd is not None:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            console.close()


# ------------------------------------------------------------------------------------- exit codes

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _inside(path: str | bytes | None, paths: Sequence[Path], *, bookkeeping: bool = False) -> bool:
    """A file at, or inside, a path the user gave: its OS error is an input error, not a bug.

    Except, unless ``bookkeeping``, in bindset's own bookkeeping below it (``DATA/_work/...``): a file missing
    there is a bug of bindset's (as ``DATA/_work/builds.jsonl`` was after an all-rejected build), not something
    the user can fix; a folder there that cannot be written is still the user's DATA.
    """
    if not path:
        return False
    m = Path(os.fsdecode(path)).absolute()
    return any(
        m == p.absolute()
        or (p.absolute() in m.parents and (bookkeeping or "_work" not in m.relative_to(p.absolute()).parts))
        for p in paths
    )


def guarded(prog: str, run: RunLog, command: Callable[[], int], user_paths: Sequence[Path] = ()) -> int:
    """Run ``command`` and map what it raises to an exit code, with one line on the console.

    :class:`schemas.errors.UserError` (config, usage, input; ConfigError and LayoutError included) -> 2; a
    ``FileNotFoundError``, or permission denied or a read-only file system, for a path at or inside one of
    ``user_paths`` -> 2; Ctrl-C -> 130; anything else
    -> 3, the line naming the log file, which holds the traceback. A bug is never shown as a usage error.
    """
    from schemas.errors import UserError

    log = logging.getLogger("bindset")
    try:
        code = command()
        log.info("%s finished with exit code %d", prog, code)
        return code
    except UserError as exc:
        log.error("%s: %s", prog, exc, extra={"file_only": True})
        print(f"{prog}: error: {exc}", file=run.console)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        if not _inside(exc.filename, user_paths):
            return _unexpected(prog, run, exc)
        log.error("%s: %s", prog, exc, extra={"file_only": True})
        print(f"{prog}: error: {os.fsdecode(exc.filename)}: no such file or folder", file=run.console)
        return EXIT_USAGE
    except OSError as exc:  # an output the user named that cannot be written (DATA in a read-only folder)
        problem = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                   errno.EROFS: "read-only file system"}.get(exc.errno)  # fmt: skip
        if problem is None or not _inside(exc.filename, user_paths, bookkeeping=True):
            return _unexpected(prog, run, exc)
        log.error("%s: %s", prog, exc, extra={"file_only": True})
        print(f"{prog}: error: {os.fsdecode(exc.filename)}: {problem}", file=run.console)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("%s: interrupted", prog, extra={"file_only": True})
        print(f"{prog}: interrupted (log: {run.path})", file=run.console)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit 3 + a log
        return _unexpected(prog, run, exc)


def _unexpected(prog: str, run: RunLog, exc: BaseException) -> int:
    logging.getLogger("bindset").error("%s: unexpected error", prog, exc_info=exc, extra={"file_only": True})
    first = (str(exc).strip().splitlines() or [""])[0]
    print(f"{prog}: unexpected error: {type(exc).__name__}: {first} (traceback in {run.path})", file=run.console)
    return EXIT_UNEXPECTED


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, exit 2: ``bindset build: error: argument --stride: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
