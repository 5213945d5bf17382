"""Self-contained HTML report of a run, with its plots embedded."""

from .html import build_report

__all__ = ["build_report"]
