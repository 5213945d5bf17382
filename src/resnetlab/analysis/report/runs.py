"""``resnetlab runs [DIR]``: every run under a folder as one row, sortable and filterable.

A run is a folder with a ``config.yaml``; runs may sit at any depth (k-fold and experiment
folders hold theirs one level down). Each row says what was trained on what, how far it got,
its best validation and test scores, its calibration, its time and state:

- ``running``: a training holds the folder's lock now;
- ``finished``: it trained all its epochs (or stopped early on --patience);
- ``stopped``: stopped on purpose (Ctrl-C, SIGTERM, --max-steps): ``train --resume`` goes on;
- ``failed``: it ended with an error (the reason is kept), or its process was killed.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ...artifacts.run import RunDir
from ...core.errors import ConfigError
from ...core.files import FolderLock
from ...core.fmt import ljust, pct, rjust, width
from ...tasks import task_of

# The columns of the table (and the keys --sort and --filter know first).
COLUMNS = (
    "name",
    "model",
    "data",
    "task",
    "epochs",
    "best_val",
    "test",
    "calibration",
    "time",
    "date",
    "state",
)
# JSON/CSV keys, in order; --filter also knows every key of the runs' config.yaml.
KEYS = (
    "name",
    "path",
    "model",
    "data",
    "task",
    "epochs_done",
    "epochs_planned",
    "best_epoch",
    "best_val",
    "best_val_metric",
    "test",
    "test_metric",
    "temperature",
    "ece_before",
    "ece_after",
    "train_seconds",
    "date",
    "state",
    "reason",
)
# Column -> the key it sorts and filters by, where the two differ.
_SORT_KEY = {"epochs": "epochs_done", "time": "train_seconds", "calibration": "ece_after"}
_FRACTIONS = ("best_val", "test", "ece_before", "ece_after")
_SKIP_DIRS = {RunDir.REPORT_FILES, RunDir.OPENVINO_CACHE, RunDir.EXPLAIN, "__pycache__", "hub"}


def find_runs(folder: str | os.PathLike, max_depth: int = 4) -> list[RunDir]:
    """The run folders under ``folder`` (``folder`` itself when it is one), by path. A run
    folder's own sub-folders (evaluations, exports) are not searched."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (give the folder your runs are in, e.g. runs)")
    found: list[RunDir] = []

    def walk(d: Path, depth: int) -> None:
        if RunDir(d).has_config():
            found.append(RunDir(d))
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in d.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if not child.name.startswith(".") and child.name not in _SKIP_DIRS:
                walk(child, depth + 1)

    walk(root, 0)
    return found


def lock_holder(run: RunDir) -> int | None:
    """The process that holds the run's lock now (a training in progress), else None. Read
    from the kernel's table of locks (``/proc/locks``) without touching the lock, so a
    training starting at that moment is never refused; elsewhere, the process the lock file
    names, when it is alive."""
    path = run.lock
    try:
        st = path.stat()
    except OSError:
        return None
    pid = FolderLock.holder(path)
    try:
        locks = Path("/proc/locks").read_text(encoding="ascii")
    except OSError:
        locks = None
    if locks is not None:
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in locks.splitlines():
            parts = line.split()
            if "FLOCK" in parts and dev in parts:
                holder = parts[parts.index(dev) - 1]
                return int(holder) if holder.isdigit() else pid or -1
        return None
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def read_status(run: RunDir) -> dict:
    """status.json (how the training ended); empty when there is none or it is damaged."""
    try:
        data = json.loads(run.status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_state(run: RunDir) -> tuple[str, str | None]:
    """``(state, reason)``: running, finished, stopped or failed (see the module's doc)."""
    pid = lock_holder(run)
    if pid is not None:
        return "running", f"process {pid}" if pid > 0 else None
    if run.lock.exists():  # left by a process that ended without letting go of the folder
        pid = FolderLock.holder(run.lock)
        who = f"process {pid}" if pid else "its process"
        return "failed", (
            f"killed: {who} ended without finishing or saying why (SIGKILL, out "
            "of memory, a lost machine); train --resume continues from the "
            "last checkpoint"
        )
    status = read_status(run)
    if status.get("state") in ("finished", "stopped", "failed"):
        return status["state"], status.get("reason")
    if run.summary.is_file():  # a run from before status.json
        return "finished", None
    if run.last_checkpoint.is_file():
        return "stopped", "ended before its last epoch; train --resume continues it"
    return "failed", "ended before its first checkpoint"


def _read_yaml(run: RunDir) -> dict:
    try:
        data = run.read_config()
    except (OSError, ValueError) as exc:  # yaml's errors are ValueErrors
        return {"_error": str(exc)}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _best_from_metrics(metrics: list[dict], key: str) -> tuple[int | None, float | None]:
    rows = [r for r in metrics if r.get(key) is not None]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: (r[key], -(r.get("val_loss") or 0.0)))
    return int(best["epoch"]) if best.get("epoch") is not None else None, best[key]


def _last_change(run: RunDir) -> float | None:
    times = []
    for p in (run.config, run.metrics, run.summary, run.status, run.last_checkpoint):
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times) if times else None


def run_row(run: RunDir, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """One run as the row ``runs`` prints (every key of ``KEYS``) plus ``config``: its
    settings (config.yaml), for filtering and comparing."""
    cfg = _read_yaml(run)
    summary = run.read_summary() if run.summary.is_file() else {}
    try:
        metrics = run.read_metrics()
    except (OSError, ValueError):
        metrics = []
    task = task_of(cfg.get("task") or "best_val_map" in summary)
    state, reason = run_state(run)
    best_epoch, best_val = _best_from_metrics(metrics, task.key("val"))
    if summary and state == "finished":
        best_val = summary.get(task.key("best_val"), best_val)
        best_epoch = summary.get("best_epoch", best_epoch)
    test = summary.get(task.key("test")) if summary else None
    seconds = summary.get("train_seconds") if summary and state == "finished" else None
    if seconds is None and metrics:
        seconds = sum(r.get("seconds") or 0.0 for r in metrics)
    calibration = summary if "temperature" in summary else _read_json(run.calibration)
    if task.calibration != "temperature":
        calibration = {}
    changed = _last_change(run)
    name = run.name
    if root is not None:
        with contextlib.suppress(ValueError):
            name = str(run.path.relative_to(root)) or run.name
        if name == ".":
            name = run.name
    return {
        "name": name,
        "path": str(run.path),
        "model": cfg.get("model") or summary.get("model"),
        "data": cfg.get("data") or summary.get("data"),
        "task": task.name,
        "epochs_done": len(metrics) if metrics else summary.get("epochs_completed", 0),
        "epochs_planned": cfg.get("epochs"),
        "best_epoch": best_epoch,
        "best_val": best_val,
        "best_val_metric": task.score,
        "test": test,
        "test_metric": task.score,
        "temperature": calibration.get("temperature"),
        "ece_before": calibration.get("ece_before"),
        "ece_after": calibration.get("ece_after"),
        "train_seconds": round(seconds, 3) if seconds is not None else None,
        "date": datetime.fromtimestamp(changed).astimezone().isoformat(timespec="seconds")
        if changed
        else None,
        "state": state,
        "reason": reason,
        "config": cfg,
    }


def list_runs(
    folder: str | os.PathLike = "runs",
    sort: str = "date",
    filters: Sequence[str] = (),
    reverse: bool = False,
) -> list[dict[str, Any]]:
    """Every run under ``folder`` as a row (``run_row``), filtered by each of ``filters``
    (``KEY OP VALUE``, see ``parse_filter``) and sorted by ``sort`` (a column or key; a
    leading ``-`` or ``reverse`` sorts descending; runs without the value come last)."""
    tests = [parse_filter(f) for f in filters]
    rows = [run_row(r, folder) for r in find_runs(folder)]
    check_filters(filters, rows)
    rows = [r for r in rows if all(t(r) for t in tests)]
    return sort_rows(rows, sort, reverse)


def sort_rows(rows: list[dict], sort: str, reverse: bool = False) -> list[dict]:
    descending = sort.startswith("-") != reverse
    key = sort.lstrip("-")
    key = _SORT_KEY.get(key, key)
    if rows and not _known_key(key, rows):
        raise ConfigError(
            f"--sort {sort}: not a column; use one of {', '.join(COLUMNS)} (or a "
            "setting of config.yaml)"
        )
    have = [r for r in rows if _value(r, key) is not None]
    missing = [r for r in rows if _value(r, key) is None]
    have.sort(key=lambda r: r["name"])
    have.sort(key=lambda r: _sortable(_value(r, key)), reverse=descending)  # ties: by name
    return have + sorted(missing, key=lambda r: r["name"])


def _sortable(v: Any) -> tuple:
    if isinstance(v, bool):
        return (0, int(v), "")
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0.0, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)


def _known_key(key: str, rows: list[dict]) -> bool:
    return key in KEYS or any(key in r.get("config", {}) for r in rows)


def _value(row: dict, key: str) -> Any:
    key = _SORT_KEY.get(key, key)
    if key in row and key != "config":
        return row[key]
    return row.get("config", {}).get(key.replace("-", "_"))


_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$")


def parse_filter(expr: str):
    """``KEY OP VALUE`` as a test of a row: OP is ``=`` (a shell pattern where VALUE has
    ``*?[``), ``!=``, ``<``, ``<=``, ``>``, ``>=`` (numbers; ``90%`` is 0.9; dates compare as
    text: ``date>=2026-05-01``) or ``~`` (contains, any case). KEY is a column, a key of
    ``--json``, or a setting of config.yaml (``lr``, ``optimizer``, ``batch_size``, ...)."""
    m = _FILTER.match(expr)
    if not m:
        raise ConfigError(
            f"--filter {expr!r}: expected KEY OP VALUE with OP one of = != < <= > "
            ">= ~ (e.g. state=finished, test>0.9, model=resnet*)"
        )
    key, op, want = m.group(1).replace("-", "_"), m.group(2), m.group(3)
    key = _SORT_KEY.get(key, key)

    def number(text: str) -> float | None:
        t = text.strip()
        try:
            return float(t[:-1]) / 100 if t.endswith("%") else float(t)
        except ValueError:
            return None

    def test(row: dict) -> bool:
        have = _value(row, key)
        if have is None:
            nothing = want.lower() in ("", "none", "null", "-")
            return nothing if op == "=" else op == "!=" and not nothing
        if op == "~":
            return want.lower() in _text(have).lower()
        a, b = (number(_text(have)) if not isinstance(have, bool) else None), number(want)
        if op in ("<", "<=", ">", ">="):
            if a is not None and b is not None:
                x, y = a, b
            elif b is not None:  # a number asked of a value that is none: never in range
                return False
            else:
                x, y = _text(have), want
            return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
        same = (a == b) if a is not None and b is not None else _matches(_text(have), want)
        return same if op == "=" else not same

    test.key = key
    return test


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _matches(have: str, want: str) -> bool:
    if any(c in want for c in "*?["):
        return fnmatch.fnmatchcase(have.lower(), want.lower())
    return have.lower() == want.lower()


def check_filters(filters: Iterable[str], rows: list[dict]) -> None:
    """A filter on a key no run has is refused (a typo would silently show nothing)."""
    for f in filters:
        key = parse_filter(f).key
        if rows and not _known_key(key, rows):
            raise ConfigError(
                f"--filter {f}: no run has {key!r}; filter on a column "
                f"({', '.join(COLUMNS)}) or a setting of config.yaml"
            )


# ------------------------------------------------------------------------------- output


def duration(seconds: float | None) -> str:
    """``54 s``, ``12.5 min``, ``3.2 h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibration_text(row: dict) -> str:
    if row.get("temperature") is None:
        return "-"
    text = f"T {row['temperature']:.2f}"
    if row.get("ece_before") is not None and row.get("ece_after") is not None:
        text += f", ECE {pct(row['ece_before'], 1)}→{pct(row['ece_after'], 1)}"
    return text


def _short(text: Any, columns: int = 28) -> str:
    s = "-" if text is None else str(text)
    if width(s) <= columns:
        return s
    while width(s) > columns - 1:
        s = s[1:]
    return "…" + s


def _score(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    return pct(v) + (" mAP" if row.get(f"{key}_metric") == "map" else "")


def format_runs(rows: list[dict], folder: str | os.PathLike) -> str:
    """The table ``resnetlab runs`` prints, with a count under it."""
    if not rows:
        return f"no runs in {folder} (a run is a folder with a config.yaml)"
    body = []
    for r in rows:
        planned = r["epochs_planned"] if r["epochs_planned"] is not None else "?"
        date = (r["date"] or "-")[:16].replace("T", " ")
        body.append(
            [
                r["name"],
                str(r["model"] or "-"),
                _short(r["data"]),
                r["task"],
                f"{r['epochs_done']}/{planned}",
                _score(r, "best_val"),
                _score(r, "test"),
                calibration_text(r),
                duration(r["train_seconds"]),
                date,
                r["state"],
            ]
        )
    head = [
        "run",
        "model",
        "data",
        "task",
        "epochs",
        "best val",
        "test",
        "calibration",
        "time",
        "date",
        "state",
    ]
    text = aligned(head, body, right={4, 5, 6, 8})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    text += "\n\n" + f"{len(rows)} run(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
    failed = [r for r in rows if r["state"] == "failed" and r.get("reason")]
    for r in failed[:5]:
        text += f"\n  {r['name']} failed: {r['reason']}"
    return text


def aligned(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A plain-text table whose columns in ``right`` (numbers) are right-aligned; the widths
    count wide (CJK) characters as two columns."""
    widths = [max(width(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            rjust(c, w) if i in right else ljust(c, w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def runs_json(rows: list[dict]) -> str:
    return json.dumps([{k: r.get(k) for k in KEYS} for r in rows], indent=2, ensure_ascii=False)


def runs_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(KEYS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in KEYS])
    return buf.getvalue()
