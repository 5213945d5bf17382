"""Memory and time before the first training step on a folder larger than the demos.

A generated folder of JPEGs (10 classes, 160x160 to 320x240, as the issue's 20,000-image
folder), trained with `resnetlab train --data DIR --input-size 128 --max-steps 1`: the peak RSS
of the whole process, the seconds before the first step, and the progress lines printed while
the data is decoded. Side by side with the code before the change (the data phase that decoded
every file twice and took mean/std in float64 over the whole cache), alternating, on a subset
small enough for the old peak to fit this machine; the new code alone on the full folder (the
old one would need about 19 GB there). Also `resnetlab stats` on the full folder, and the
statistics alone on a uint8 cache in memory, old formula against the chunked one.

    python benchmarks/data_memory.py [--images 20000] [--subset 2500] [--old REV]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_jpeg_folder, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(160, 160), (320, 240), (240, 320), (200, 150), (256, 192), (300, 200)]
CLASSES = 10


def old_tree(rev: str, into: Path) -> Path:
    """``src/`` of ``rev``, unpacked (nothing in the checkout changes)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def before_change() -> str:
    """The commit before the one that made each file decode once (added data/moments.py)."""
    found = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "src/resnetlab/data/moments.py",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    return f"{found[-1]}^" if found else "HEAD"


def measured(argv: list[str], env: dict, header: str) -> dict:
    """Run ``argv``; its peak RSS (wait4), wall seconds, seconds until a stderr line starts
    with ``header``, and the stderr lines before it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    before, at = [], None
    for line in proc.stderr:
        if at is None and line.startswith(header):
            at = time.perf_counter() - t0
        elif at is None:
            before.append(line.rstrip("\n"))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n" + "\n".join(before[-20:]))
    return {
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(seconds, 2),
        "seconds_to_first_step": round(at, 2) if at is not None else None,
        "lines_before_first_step": before,
    }


def train_argv(data: Path, out: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resnetlab",
        "train",
        "--data",
        str(data),
        "--input-size",
        "128",
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "32",
        "--num-workers",
        "0",
        "--no-precise-bn",
        "--out",
        str(out),
        "--name",
        name,
    ]


def env_for(src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "RESNETLAB_PROGRESS_SECONDS": "5"}
    return env


def subset(folder: Path, into: Path, n: int) -> Path:
    """The first ``n`` images (the same share of each class) as links."""
    per = n // CLASSES
    for d in sorted(folder.iterdir()):
        (into / d.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(d.iterdir(), key=lambda p: int(p.stem))[:per]:
            os.symlink(f, into / d.name / f.name)
    return into


def stats_alone(images: int) -> dict:
    """Peak RSS growth of mean/std over a uint8 cache of ``images`` at 146x146 (the cache of
    --input-size 128), old formula (float64 copies) against the chunked one, each in a fresh
    process."""
    code = """
import resource, sys, time, torch
n = int(sys.argv[1])
x = torch.randint(0, 256, (n, 3, 146, 146), dtype=torch.uint8)
def old(images):
    y = images.to(torch.float64) / 255.0
    return y.sum(dim=(0, 2, 3)), y.square().sum(dim=(0, 2, 3))
from resnetlab.data.moments import image_moments, stats_from_moments
def new(images):
    return stats_from_moments(image_moments(images))
fn = old if sys.argv[2] == "old" else new
fn(x[:4])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
fn(x)
t = time.perf_counter() - t0
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, t)
"""
    out = {"images": images, "cache_mib": round(images * 3 * 146 * 146 / 2**20, 1)}
    for method in ("old", "new"):
        p = subprocess.run(
            [sys.executable, "-c", code, str(images), method],
            check=True,
            capture_output=True,
            text=True,
            env=env_for(ROOT / "src"),
        )
        grew, seconds = map(float, p.stdout.split())
        out[method] = {"peak_growth_mib": round(grew, 1), "seconds": round(seconds, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--subset", type=int, default=2500, help="images for old vs new")
    ap.add_argument("--old", default=None, help="git revision of the old code")
    ap.add_argument("--repetitions", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-memory-"))
    try:
        t0 = time.perf_counter()
        big = make_jpeg_folder(
            tmp / "big", classes=CLASSES, per_class=args.images // CLASSES, sizes=SIZES
        )
        made = time.perf_counter() - t0
        mib = sum(f.stat().st_size for f in big.rglob("*.jpg")) / 2**20
        print(f"{args.images} JPEGs ({mib:.0f} MiB) in {made:.0f} s", flush=True)
        rev = args.old or before_change()
        old_src, new_src = old_tree(rev, tmp / "old"), ROOT / "src"
        small = subset(big, tmp / "small", args.subset)
        side: dict = {"old": [], "new": []}
        for rep in range(args.repetitions):  # alternating, so both see the same machine
            for name, src in (("old", old_src), ("new", new_src)):
                r = measured(
                    train_argv(small, tmp / "runs", f"{name}{rep}"), env_for(src), "training "
                )
                print(
                    f"subset {name}: {r['peak_rss_mib']:.0f} MiB peak, "
                    f"{r['seconds_to_first_step']} s to the first step",
                    flush=True,
                )
                side[name].append(r)
        full = measured(train_argv(big, tmp / "runs", "full"), env_for(new_src), "training ")
        print(
            f"full new: {full['peak_rss_mib']:.0f} MiB peak, "
            f"{full['seconds_to_first_step']} s to the first step",
            flush=True,
        )
        stats = measured(
            [sys.executable, "-m", "resnetlab", "stats", str(big)], env_for(new_src), "\0"
        )  # every stderr line: its progress
        print(f"stats new: {stats['peak_rss_mib']:.0f} MiB peak, {stats['seconds']} s", flush=True)
        alone = stats_alone(args.subset)
        grew = {k: alone[k]["peak_growth_mib"] for k in ("old", "new")}
        print(
            f"statistics alone on {alone['cache_mib']} MiB: old +{grew['old']} MiB, new "
            f"+{grew['new']} MiB",
            flush=True,
        )

        def median(runs, key):
            values = sorted(r[key] for r in runs)
            return values[len(values) // 2]

        old_peak = median(side["old"], "peak_rss_mib")
        new_peak = median(side["new"], "peak_rss_mib")
        old_t = median(side["old"], "seconds_to_first_step")
        new_t = median(side["new"], "seconds_to_first_step")
        write_result(
            "data_memory",
            {
                "command": "resnetlab train --data DIR --input-size 128 --max-steps 1 (resnet20 "
                "widths 4-8-8, batch 32, --num-workers 0)",
                "folder": {
                    "images": args.images,
                    "classes": CLASSES,
                    "sizes_wxh": SIZES,
                    "mib": round(mib, 1),
                    "generated_seconds": round(made, 1),
                },
                "old_revision": subprocess.run(
                    ["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True
                ).stdout.strip(),
                "subset": {
                    "images": args.subset,
                    "repetitions": args.repetitions,
                    "old": side["old"],
                    "new": side["new"],
                    "peak_rss_ratio_old_over_new": round(old_peak / new_peak, 2),
                    "first_step_seconds_ratio_old_over_new": round(old_t / new_t, 2),
                },
                "full_new": full,
                "full_old": "not run: the old data phase needs about 19 GB for this folder (the "
                "issue's 19.3 GB), more than this machine can spare",
                "stats_full_new": stats,
                "statistics_alone": alone,
                "peak_rss_unit": "MiB (ru_maxrss of the process)",
            },
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
