"""One-line errors for the command-line tools.

Anything the user can fix (bad data, bad flags, bad checkpoints, an output path that cannot
be written) raises ValueError (or a subclass: DatasetError, CheckpointError, UsageError) or
an OSError; the CLIs print it as one line on stderr and exit 2, without a traceback. A
command line that does not parse is one line too, with a pointer to --help instead of the
whole usage text. Warnings are one line each on stderr ("warning: ..."). Set
RRM_FAST_DEBUG=1 (or the older RRM_FAST_TRACEBACK=1) to see the full stack instead.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys

DEBUG_VARIABLES = ("RRM_FAST_DEBUG", "RRM_FAST_TRACEBACK")


def show_tracebacks() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM after the work done so far was saved; ``message`` says how to go on.
    run_cli prints it as one line and exits 128 + signal (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message


class UsageError(ValueError):
    """A command line that does not parse (an unknown flag, a value of the wrong type)."""


def did_you_mean(word: str, options) -> str:
    """" (did you mean --epochs?)" for a mistyped flag, or ""."""
    close = difflib.get_close_matches(word.split("=")[0], list(options), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line ("...; see PROG --help"), not the usage text and a SystemExit."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            flags = [w for w in message.split(":", 1)[1].split() if w.startswith("-")]
            message += did_you_mean(flags[0], self._option_string_actions) if flags else ""
        raise UsageError(f"{message}; see {self.prog} --help")


class _Console(logging.StreamHandler):
    """A handler writing to sys.stdout or sys.stderr as they are when each record is emitted
    (a redirected or captured stream is followed)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    @property
    def stream(self):
        return getattr(sys, self.name)

    @stream.setter
    def stream(self, _value):
        pass


def console_logging(info: bool) -> None:
    """rrm_fast's log records on the console: warnings as "warning: ..." lines on stderr and,
    with ``info``, the rest on stdout (so stderr holds only what went wrong). Idempotent."""
    logger = logging.getLogger("rrm_fast")
    consoles = {h.name: h for h in logger.handlers if isinstance(h, _Console)}
    if "stderr" not in consoles:
        err = _Console("stderr")
        err.setLevel(logging.WARNING)
        err.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(err)
    if info and "stdout" not in consoles:
        out = _Console("stdout")
        out.addFilter(lambda record: record.levelno < logging.WARNING)
        out.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(out)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def run_cli(fn) -> int:
    """Every rrm_fast CLI runs through here: process-wide settings, then fn, then one-line errors."""
    from .runtime import keep_freed_host_memory
    keep_freed_host_memory()
    console_logging(info=False)
    try:
        return fn()
    except (ValueError, OSError) as e:
        if show_tracebacks():
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # Ctrl-C / SIGTERM: an Interrupted (the trainer's, the evaluator's) has saved its work
        # and says how to go on; a bare KeyboardInterrupt from anywhere else is "interrupted"
        if show_tracebacks():
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(getattr(e, "message", None) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)


def one_line(e: Exception) -> str:
    """The first line of an error's message; an OSError as "what: path"."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
