"""Flags declared as a table: each parser of the command line lists ``(flags, {keywords})``."""

from __future__ import annotations

import argparse


def _args(p: argparse.ArgumentParser, *specs: tuple) -> argparse.ArgumentParser:
    """``(flags, {argparse keywords})`` pairs, so a parser reads as a table."""
    for flags, kw in specs:
        p.add_argument(*flags.split(), **kw)
    return p
