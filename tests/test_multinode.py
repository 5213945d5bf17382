"""Restarts under torchrun: which run a restarted worker continues, agreed by every rank.

The end-to-end runs (two torchrun "nodes" on shards, and one whose worker is killed mid-epoch)
take about a minute on 2 cores: they are benchmarks/multinode.py, with the result committed in
benchmarks/results/multinode.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch.multiprocessing as mp

from resnetlab.artifacts.run import RunDir
from resnetlab.train.distributed import DistInfo
from resnetlab.train.elastic import (
    ElasticStart,
    claimed_run,
    elastic_start,
    record_path,
    record_run,
    restart_count,
    restart_resume_target,
)


def _env(count: int = 0, job: str = "job-1") -> dict:
    return {"TORCHELASTIC_RUN_ID": job, "TORCHELASTIC_RESTART_COUNT": str(count)}


def _run(out: Path, name: str, checkpoint: bool = True) -> Path:
    run = RunDir(out / name)
    run.path.mkdir(parents=True)
    run.config.write_text("model: resnet20\n")
    if checkpoint:
        run.last_checkpoint.write_bytes(b"state")
    return run.path


def test_outside_torchrun_nothing_is_recorded_or_resumed(tmp_path):
    run = _run(tmp_path, "r")
    assert restart_count({}) == 0 and restart_count({"TORCHELASTIC_RESTART_COUNT": "x"}) == 0
    assert record_run(run, {}) is None and not list(tmp_path.glob(".*"))
    assert restart_resume_target(tmp_path, "r", {}, restarted=True) is None
    assert elastic_start(tmp_path, "r", env={}) == ElasticStart(None, "r")


def test_a_restart_resumes_the_folder_its_job_recorded(tmp_path):
    run = _run(tmp_path, "resnet20-shards-20260101-000000")
    assert record_run(run, _env()) == record_path(tmp_path, "job-1")
    assert claimed_run(tmp_path, _env()) == run.name
    # The first attempt of a job never resumes, even when its folder is there.
    assert restart_resume_target(tmp_path, None, _env(0)) is None
    assert restart_resume_target(tmp_path, None, _env(1)) == run
    assert restart_resume_target(tmp_path, run.name, _env(2)) == run
    # Another --name, another job, or no checkpoint yet: start (or take over) instead.
    assert restart_resume_target(tmp_path, "other", _env(1)) is None
    assert restart_resume_target(tmp_path, None, _env(1, job="job-2")) is None
    RunDir(run).last_checkpoint.unlink()
    assert restart_resume_target(tmp_path, None, _env(1)) is None


def test_a_record_naming_a_path_outside_out_is_ignored(tmp_path):
    record_path(tmp_path, "job-1").write_text(json.dumps({"run_id": "job-1", "name": "../x"}))
    assert claimed_run(tmp_path, _env(1)) is None
    record_path(tmp_path, "job-1").write_text("not json")
    assert claimed_run(tmp_path, _env(1)) is None
    # Job ids become file names: anything odd in them is replaced.
    assert record_path(tmp_path, "a/../b c").name == ".torchelastic-a_.._b_c.json"


def test_single_process_start(tmp_path):
    run = _run(tmp_path, "r")
    info = DistInfo()
    assert elastic_start(tmp_path, None, info, _env(0)) == ElasticStart(None, None)
    assert elastic_start(tmp_path, None, info, _env(1)) == ElasticStart(None, None)  # no record
    record_run(run, _env())
    assert elastic_start(tmp_path, None, info, _env(1)) == ElasticStart(run, "r")
    RunDir(run).last_checkpoint.unlink()
    # Restarted before its first checkpoint: the same name again, to take the folder over.
    assert elastic_start(tmp_path, None, info, _env(1)) == ElasticStart(None, "r")
    assert elastic_start(tmp_path, "r", info, _env(1)) == ElasticStart(None, "r")


def _rank(rank: int, out: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/.store", rank=rank, world_size=2)
    try:
        got = []
        for counts in ([0, 1], [1, 0], [0, 0]):
            start = elastic_start(out, None, DistInfo(rank, 2, rank), _env(counts[rank]))
            got.append([str(start.resume), start.name])
        Path(results, f"{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_when_only_one_node_counts_the_restart(tmp_path):
    # torchrun counts a restart only on the node whose worker failed; the node restarted
    # because its peer left says 0. Both must resume, or DDP would pair different steps.
    out, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    run = _run(out, "r")
    record_run(run, _env())
    mp.start_processes(_rank, args=(str(out), str(results)), nprocs=2, start_method="spawn")
    resumed, fresh = [str(run), "r"], ["None", None]
    for r in (0, 1):
        assert json.loads((results / f"{r}.json").read_text()) == [resumed, resumed, fresh]
