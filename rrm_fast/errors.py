"""One-line errors for the command-line tools.

Anything the user can fix (bad data, bad flags, bad checkpoints) raises ValueError (or a
subclass: DatasetError, CheckpointError); the CLIs print it as one line on stderr and exit 2,
without a traceback. Set RRM_FAST_TRACEBACK=1 to see the full stack.
"""
from __future__ import annotations

import os
import sys


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
        # Ctrl-C / SIGTERM: the trainer's TrainingInterrupted has saved a state and says how
        # to resume; any CLI that runs training (train, bench claims/compare) ends the same way
        if os.environ.get("RRM_FAST_TRACEBACK"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(getattr(e, "message", None) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
