"""Two "nodes" on one machine: torchrun's c10d rendezvous, gloo on CPU, training on shards.

Runs, on a tiny model and WebDataset shards (deterministic, fp32, no loader workers):

1. ``straight``: two ``torchrun --nnodes 2 --node-rank {0,1} --nproc-per-node 1`` agents
   meeting at ``--rdzv-endpoint 127.0.0.1:PORT``; both ranks must print the same final
   weights, and one complete run folder must appear in ``--out`` (the folders of both "nodes"
   are one file system here, as on a cluster with shared storage).
2. ``killed``: the same under ``--max-restarts 2`` with ``--checkpoint-every 2``, no ``--name``;
   once the first mid-epoch checkpoint is on disk, node 1's worker process is killed (SIGKILL).
   torchrun restarts both workers; the run must continue from its checkpoint by itself, end
   with the weights of ``straight`` and leave one run folder.

Writes benchmarks/results/multinode.json. ``PYTHONPATH`` decides which resnetlab the workers
import (the tree this file sits in by default).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import make_jpeg_folder, write_result  # noqa: E402

SRC = Path(__file__).resolve().parent.parent / "src"
RUN_FILES = (
    "config.yaml",
    "checkpoint-last.pt",
    "checkpoint-best.pt",
    "model.safetensors",
    "model.json",
    "metrics.csv",
    "summary.json",
)
SHA = re.compile(r"rank (\d+)/(\d+): final weights sha256 ([0-9a-f]{64})")
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def make_shards(root: Path) -> Path:
    from resnetlab.data import load_source, write_shards

    imgs = make_jpeg_folder(root / "imgs", classes=2, per_class=48, sizes=[(20, 20)])
    source = load_source(str(imgs), val_ratio=0.125, test_ratio=0.0, seed=0)
    write_shards(source, root / "shards", shard_size_bytes=16_000, seed=0)
    return root / "shards"


def start_nodes(shards: Path, out: Path, extra: list[str], restarts: int) -> list:
    port, job = free_port(), f"resnetlab-{uuid.uuid4().hex[:8]}"
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    train = [
        "-m",
        "resnetlab",
        "train",
        "--data",
        f"wds:{shards}",
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--input-size",
        "16",
        "--num-workers",
        "0",
        "--deterministic",
        "--precision",
        "fp32",
        "--warmup-epochs",
        "0",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            job,
            "--max-restarts",
            str(restarts),
            *train,
        ]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    return procs


def finish(procs: list, t0: float) -> dict:
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    text = "".join(o + e for o, e in outs)
    sums = {int(r): s for r, _, s in SHA.findall(text)}
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "returncodes": [p.returncode for p in procs],
        "sha256_by_rank": sums,
        "worker_killed_logged": "exitcode: -9" in text,
        "log": text,
    }


def check_run_folder(out: Path) -> dict:
    folders = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    records = sorted(p.name for p in out.glob(".torchelastic-*.json"))
    info: dict = {"run_folders": [p.name for p in folders], "job_records": records}
    if len(folders) == 1:
        run = folders[0]
        info["missing_files"] = [f for f in RUN_FILES if not (run / f).is_file()]
        done = (run / "summary.json").is_file()
        summary = json.loads((run / "summary.json").read_text()) if done else {}
        info["epochs_completed"] = summary.get("epochs_completed")
        info["world_size"] = summary.get("world_size")
        info["metrics_rows"] = len((run / "metrics.csv").read_text().splitlines()) - 1
        info["train_loss_by_epoch"] = [
            float(r.split(",")[2]) for r in (run / "metrics.csv").read_text().splitlines()[1:]
        ]
    return info


def one_complete(r: dict) -> bool:
    return len(r["run_folders"]) == 1 and not r["missing_files"] and r["epochs_completed"] == 2


def straight(shards: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    result = finish(start_nodes(shards, out, ["--name", "two-nodes"], restarts=0), t0)
    return {**result, **check_run_folder(out)}


def killed(shards: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    procs = start_nodes(shards, out, ["--checkpoint-every", "2"], restarts=2)
    victim, at = None, None
    while time.perf_counter() - t0 < TIMEOUT and all(p.poll() is None for p in procs):
        ckpts = list(out.glob("*/checkpoint-last.pt"))
        if ckpts:
            workers = children(procs[1].pid)
            if workers:
                victim = workers[0]
                os.kill(victim, signal.SIGKILL)
                state = torch.load(ckpts[0], weights_only=True, map_location="cpu")
                at = {
                    "epoch": int(state["epoch"]),
                    "step_in_epoch": int(state["step_in_epoch"]),
                    "global_step": int(state["global_step"]),
                }
                break
        time.sleep(0.01)
    result = finish(procs, t0)
    return {**result, "killed_pid": victim, "checkpoint_when_killed": at, **check_run_folder(out)}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-multinode-"))
    shards = make_shards(tmp)
    load_before = os.getloadavg()
    a = straight(shards, tmp / "straight")
    b = killed(shards, tmp / "killed")
    sha_a, sha_b = a["sha256_by_rank"], b["sha256_by_rank"]
    at = b["checkpoint_when_killed"] or {}
    # Without --name, a restart that started afresh would make a second folder (or refuse the
    # first, which holds a checkpoint): one complete folder means it resumed.
    checks = {
        "straight_ranks_agree": len(sha_a) == 2 and len(set(sha_a.values())) == 1,
        "straight_one_complete_run_folder": one_complete(a),
        "killed_mid_epoch_after_a_checkpoint": at.get("step_in_epoch", 0) > 0,
        "killed_worker_seen_by_torchrun": b["worker_killed_logged"],
        "killed_ranks_agree": len(sha_b) == 2 and len(set(sha_b.values())) == 1,
        "killed_one_complete_run_folder": one_complete(b),
        "killed_equals_straight": bool(sha_a) and set(sha_a.values()) == set(sha_b.values()),
        "returncodes_zero": a["returncodes"] == [0, 0] and b["returncodes"] == [0, 0],
    }
    for r in (a, b):
        if not all(checks.values()):
            print(r["log"][-6000:], file=sys.stderr)
        r["log_tail"] = r.pop("log")[-1500:]
    path = write_result(
        "multinode",
        {
            "setup": "2 torchrun agents (--nnodes 2, --nproc-per-node 1, c10d rendezvous on "
            "127.0.0.1), gloo on CPU, resnet20 widths [4,8,8], 16 px, 84 training images "
            "in WebDataset shards, batch 4 per rank, 2 epochs, fp32, deterministic",
            "workers_import": str(SRC),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "checks": checks,
            "passed": all(checks.values()),
            "straight": a,
            "killed": b,
        },
    )
    for k, v in checks.items():
        print(f"{k:34} {v}")
    print(f"straight {a['seconds']} s, killed {b['seconds']} s; wrote {path}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
