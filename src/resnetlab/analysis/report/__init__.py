"""Self-contained HTML report of a run, with its plots embedded; every run of a folder as one
table; runs side by side."""

from .compare import compare_runs
from .compare_html import write_compare_html
from .html import build_report
from .runs import list_runs

__all__ = ["build_report", "compare_runs", "list_runs", "write_compare_html"]
