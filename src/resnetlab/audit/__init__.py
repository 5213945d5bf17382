"""The data audit (``resnetlab audit DATA``): exact and near duplicates grouped, leaks across
train/val/test and label conflicts named, likely wrong labels ranked by confident learning;
a table, JSON and a page of thumbnails; files for ``train --exclude`` and ``--relabel``."""

from .core import AuditResult, audit, format_audit, public

__all__ = ["AuditResult", "audit", "format_audit", "public"]
