"""One-line errors for the command-line tools.

Anything the user can fix (bad data, bad flags, bad checkpoints) raises ValueError (or a
subclass: DatasetError, CheckpointError); the CLIs print it as one line on stderr and exit 2,
without a traceback. Set RRM_FAST_TRACEBACK=1 to see the full stack.
"""
from __future__ import annotations

import os
import sys


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM after the work done so far was saved; ``message`` says how to go on.
    run_cli prints it as one line and exits 128 + signal (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message


def run_cli(fn) -> int:
    """Every rrm_fast CLI runs through here: process-wide settings, then fn, then one-line errors."""
    from .runtime import keep_freed_host_memory
    keep_freed_host_memory()
    try:
        return fn()
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("RRM_FAST_TRACEBACK"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # Ctrl-C / SIGTERM: an Interrupted (the trainer's, the evaluator's) has saved its work
        # and says how to go on; a bare KeyboardInterrupt from anywhere else is "interrupted"
        if os.environ.get("RRM_FAST_TRACEBACK"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(getattr(e, "message", None) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
