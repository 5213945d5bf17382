"""`resnetlab` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from ..core.errors import ResnetlabError
from ..core.runtime import tune_allocator
from . import data_commands, model_commands, train_commands  # noqa: F401  they register
from .model_commands import _output_flags
from .parser import build_parser
from .registry import COMMANDS

# Commands that finish in seconds, where tearing the interpreter down (every module of torch,
# onnxruntime and OpenVINO freed one by one) would add 0.4-0.5 s to a 2-3 s run.
QUICK_COMMANDS = frozenset({"models", "summary", "predict", "evaluate", "export", "explain"})


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` as the interpreter would (threads joined, exit
    handlers run: logging, thread pools, child processes; stdout/stderr flushed), without
    its teardown of every module."""
    threading._shutdown()  # what the interpreter's exit does first (OpenVINO leaves a pool)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or file: nothing to add
            stream.flush()
    os._exit(status)


def _is_entry_point(argv: Sequence[str] | None) -> bool:
    """Whether ``main`` runs as the program (`resnetlab`, `python -m resnetlab`: the entry
    script holds this very function as ``__main__.main``). Called from Python (tests, a
    notebook), ``main`` returns to its caller as usual; so it does on a Python without
    ``threading._shutdown`` (CPython has it)."""
    entry = getattr(sys.modules.get("__main__"), "main", None) is main
    return argv is None and entry and hasattr(threading, "_shutdown")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_output_flags(list(sys.argv[1:] if argv is None else argv)))
    tune_allocator()
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at exit
        if args.command in QUICK_COMMANDS and _is_entry_point(argv):
            exit_now(status)
        return status
    except BrokenPipeError:
        # `resnetlab predict … | head`: the reader has gone; stop quietly, as `yes | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    except ResnetlabError as exc:  # the user's to fix: one line; anything else is a bug
        print(f"resnetlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
