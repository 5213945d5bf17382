"""Runs that survive a lost worker under ``torchrun --max-restarts N``.

When a worker dies, torchrun stops the job's other workers and starts them all again with the
same command line. A restarted ``train`` must continue the run its job began, from that run's
last checkpoint, instead of starting over (or refusing a folder that already holds files).

Two facts decide it:

* **This is a restart.** torchrun sets ``TORCHELASTIC_RESTART_COUNT`` per node, and counts
  only the restarts of its own node's failures: the node whose worker died says 1, a node
  restarted because a peer left may still say 0. The ranks therefore agree on the largest
  count (``elastic_start``) before anything is decided.
* **Which run this job began.** Without ``--name`` each attempt would pick a new timestamped
  folder. Rank 0 records the folder it claimed in ``OUT/.torchelastic-<RUN_ID>.json``
  (``record_run``), keyed by ``TORCHELASTIC_RUN_ID`` (torchrun's ``--rdzv-id``, the same on
  every node and every attempt of a job); a restart reads it back.

A restart resumes only a folder this job recorded and that holds ``checkpoint-last.pt``; a
restart before the first checkpoint reuses the recorded name, so the folder (holding only the
files a run writes at start-up) is taken over, not duplicated. Every rank reads the checkpoint,
so the run folder must be on storage that all nodes share (as it is for ``--resume``).
Give each job its own ``--rdzv-id`` (on a cluster, the scheduler's job id): jobs that share the
default id ``none`` and one ``--out`` share one record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from ..artifacts.run import RunDir
from ..core.files import atomic_write_text
from . import distributed as D

__all__ = [
    "ElasticStart",
    "claimed_run",
    "elastic_start",
    "record_path",
    "record_run",
    "restart_count",
    "restart_resume_target",
    "run_id",
]

RECORD_PREFIX = ".torchelastic-"


class ElasticStart(NamedTuple):
    """What a ``train`` started by torchrun does: resume ``resume`` (a run folder) or start
    a new run named ``name`` (None: the default model-data-time name)."""

    resume: Path | None
    name: str | None


def run_id(env: Mapping[str, str] = os.environ) -> str | None:
    """torchrun's job id (``--rdzv-id``); None outside torchrun."""
    return env.get("TORCHELASTIC_RUN_ID") or None


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How many times torchrun restarted this node's workers (0 outside torchrun)."""
    try:
        return max(0, int(env.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def record_path(out: str | os.PathLike, job: str) -> Path:
    """The file in ``out`` that names the run folder job ``job`` claimed."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job)[:100] or "_"
    return Path(out) / f"{RECORD_PREFIX}{safe}.json"


def record_run(run_dir: str | os.PathLike, env: Mapping[str, str] = os.environ) -> Path | None:
    """Rank 0, once the run folder is claimed: note that this torchrun job owns it.
    Returns the record's path; None (nothing written) outside torchrun."""
    job = run_id(env)
    if job is None:
        return None
    run_dir = Path(run_dir)
    path = record_path(run_dir.parent, job)
    atomic_write_text(path, json.dumps({"run_id": job, "name": run_dir.name}) + "\n")
    return path


def claimed_run(out: str | os.PathLike, env: Mapping[str, str] = os.environ) -> str | None:
    """The name of the run folder in ``out`` that this torchrun job claimed, if any."""
    job = run_id(env)
    if job is None:
        return None
    try:
        data = json.loads(record_path(out, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) and data.get("run_id") == job else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        return None  # not a plain folder name: ignore it rather than leave ``out``
    return name


def restart_resume_target(
    out: str | os.PathLike,
    name: str | None,
    env: Mapping[str, str] = os.environ,
    restarted: bool | None = None,
) -> Path | None:
    """The run folder a restarted worker resumes, or None to start a new run.

    ``out``/``name``: the run's ``--out`` and ``--name`` (None: not given). ``restarted``:
    whether torchrun restarted the job (default: this node's ``TORCHELASTIC_RESTART_COUNT``
    > 0; ``elastic_start`` passes what all ranks agreed on). A folder is resumed only when this
    job recorded it (and, with ``--name``, it is that folder) and it holds a last checkpoint."""
    if restarted is None:
        restarted = restart_count(env) > 0
    if not restarted:
        return None
    claimed = claimed_run(out, env)
    if claimed is None or (name is not None and name != claimed):
        return None
    run = RunDir(Path(out) / claimed)
    return run.path if run.last_checkpoint.is_file() else None


def elastic_start(
    out: str | os.PathLike,
    name: str | None,
    info: D.DistInfo | None = None,
    env: Mapping[str, str] = os.environ,
) -> ElasticStart:
    """Every rank's answer to "resume or start?", the same on all ranks.

    Joins the process group torchrun describes (``info``: one already joined). The ranks agree
    that the job was restarted when any rank's restart count is above 0; rank 0 then looks at
    ``out`` and tells the others. Outside torchrun: ``ElasticStart(None, name)``."""
    if run_id(env) is None:
        return ElasticStart(None, name)
    info = info or D.init_distributed()
    count = restart_count(env)
    if info.enabled:
        import torch.distributed as dist

        counts: list = [None] * info.world_size
        dist.all_gather_object(counts, count)
        count = max(int(c) for c in counts)
    decision: tuple[str | None, str | None] = (None, name)
    if info.is_main and count > 0:
        target = restart_resume_target(out, name, env, restarted=True)
        claimed = claimed_run(out, env)
        if target is not None:
            decision = (str(target), target.name)
        elif claimed is not None and name in (None, claimed):
            decision = (None, claimed)  # restarted before its first checkpoint
    resume, chosen = D.broadcast_object(decision, info)
    return ElasticStart(Path(resume) if resume is not None else None, chosen)
