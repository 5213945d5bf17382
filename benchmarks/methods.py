"""Training methods measured side by side in one run: distillation, SWA, test-time augmentation.

    python benchmarks/methods.py [--seeds 3] [--epochs 15] [--teacher-epochs 20]

On the embedded digits with the training split cut to 20 % (stratified, 252 of its 1,259
images; validation and test kept whole, 269 images each), where a ResNet-20 trained alone does
not saturate:

- distillation: a CIFAR ResNet-56 teacher (trained once, seed 0, ``--teacher-epochs``) and a
  ResNet-20 student distilled from it (``--teacher``, T 4, weight 0.9: the defaults) against
  the same student trained alone, per seed;
- SWA: the plain student against the same run with ``--swa-epochs`` a quarter of its epochs;
- TTA: the plain student's test set with ``--tta flip``, ``crops`` and ``flip-crops`` against
  none (the digits are not left-right symmetric and the small preset never flips them: flips
  are out of distribution here, shifts are not).

Every run is ``resnetlab train``'s defaults otherwise (batch 32: 7 steps an epoch; precise
BatchNorm on; the best epoch by validation top-1 is the run's model, its test top-1 reported).
Over ``--seeds`` seeds: mean ± std of test top-1, the training time of each (its
``summary.json``: teacher forwards, SWA's BatchNorm passes included) and TTA's prediction time
per image. One thread (these machines are shared; two threads under contention spin-wait in
OpenMP); about 10 minutes on 2 cores with the defaults. Results: ``results/methods.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from resnetlab.data.sources import load_digits_source, stratified_split  # noqa: E402
from resnetlab.inference.loading import load_model, run_pipeline  # noqa: E402
from resnetlab.inference.tta import PASSES, tta_logits  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402

TTA_MODES = ("none", "flip", "crops", "flip-crops")


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return ""


def reduced_digits(root: Path, fraction: float, seed: int = 0) -> Path:
    """The digits as DIR/train|val|test/<class>/*.png, the training split cut to ``fraction``
    (stratified); validation and test are the digits' own."""
    source = load_digits_source()
    keep = {}
    train = source.splits["train"]
    parts = stratified_split(train.labels, {"val": 1 - fraction}, seed)
    keep["train"] = train.subset(parts["train"])
    keep["val"], keep["test"] = source.splits["val"], source.splits["test"]
    for split, data in keep.items():
        for i, (img, label) in enumerate(zip(data.images, data.labels.tolist())):
            d = root / split / source.classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(d / f"{i:04d}.png")
    return root


def train(data: Path, out: Path, name: str, seed: int, epochs: int, **kw) -> dict:
    settings = dict(
        data=str(data),
        input_size=32,
        preset="small",
        in_chans=1,
        epochs=epochs,
        batch_size=32,
        seed=seed,
        out=str(out),
        name=name,
        num_workers=0,
    )
    settings.update(kw)
    t0 = time.perf_counter()
    s = Trainer(resolve_config(settings), verbose=False).fit()
    return {
        "test_top1": s["test_top1"],
        "train_seconds": s["train_seconds"],
        "wall_seconds": time.perf_counter() - t0,
        "run": s["run_dir"],
    }


def tta_scores(run: str) -> dict:
    """Test top-1 and seconds per image of each TTA mode, on the run's own test split."""
    loaded = load_model(run)
    pipe = run_pipeline(loaded, num_workers=0)
    loader, tf = pipe.split_loader("test", channels_last=True)
    batches = [(tf(x), y) for x, y in loader]
    model = loaded.model.to(memory_format=torch.channels_last).eval()
    out = {}
    for mode in TTA_MODES:
        t0 = time.perf_counter()
        correct = n = 0
        for x, y in batches:
            with torch.inference_mode():
                correct += int((tta_logits(model, x, mode).argmax(1) == y).sum())
            n += len(y)
        out[mode] = {"test_top1": correct / n, "seconds_per_image": (time.perf_counter() - t0) / n}
    return out


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15, help="each student run")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--fraction", type=float, default=0.2, help="of the digits' training split")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    swa_epochs = max(1, args.epochs // 4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = reduced_digits(Path(tmp) / "digits", args.fraction)
        runs = Path(tmp) / "runs"
        n_train = sum(1 for _ in (data / "train").rglob("*.png"))
        teacher = train(data, runs, "teacher", 0, args.teacher_epochs, model="resnet56")
        print(
            f"teacher resnet56: test top-1 {teacher['test_top1']:.3f} "
            f"({teacher['train_seconds']:.0f}s)",
            flush=True,
        )
        rows = {"alone": [], "distilled": [], "swa": []}
        tta = {m: [] for m in TTA_MODES}
        for seed in range(args.seeds):
            plain = train(data, runs, f"alone-{seed}", seed, args.epochs, model="resnet20")
            kd = train(
                data,
                runs,
                f"kd-{seed}",
                seed,
                args.epochs,
                model="resnet20",
                teacher=teacher["run"],
            )
            swa = train(
                data,
                runs,
                f"swa-{seed}",
                seed,
                args.epochs,
                model="resnet20",
                swa_epochs=swa_epochs,
            )
            for name, r in (("alone", plain), ("distilled", kd), ("swa", swa)):
                rows[name].append(r)
            for mode, r in tta_scores(plain["run"]).items():
                tta[mode].append(r)
            shown = ", ".join(f"{m} {v[-1]['test_top1']:.3f}" for m, v in tta.items())
            print(
                f"seed {seed}: alone {plain['test_top1']:.3f}, distilled {kd['test_top1']:.3f}, "
                f"swa {swa['test_top1']:.3f}; tta {shown}",
                flush=True,
            )
    summary = {
        name: {
            "test_top1": mean_std([r["test_top1"] for r in rs]),
            "train_seconds": mean_std([r["train_seconds"] for r in rs]),
        }
        for name, rs in rows.items()
    }
    base_time = summary["alone"]["train_seconds"]["mean"]
    for name in summary:
        summary[name]["time_vs_alone"] = summary[name]["train_seconds"]["mean"] / base_time
    tta_summary = {
        m: {
            "passes": PASSES[m],
            "test_top1": mean_std([r["test_top1"] for r in rs]),
            "ms_per_image": statistics.mean(r["seconds_per_image"] for r in rs) * 1000,
        }
        for m, rs in tta.items()
    }

    def delta(a: str, b: str, table: dict) -> dict:
        d = [
            x - y for x, y in zip(table[a]["test_top1"]["values"], table[b]["test_top1"]["values"])
        ]
        return mean_std(d)

    payload = {
        "cpu_lscpu": lscpu_model(),
        "threads": torch.get_num_threads(),
        "setup": {
            "data": f"digits, training split cut to {args.fraction:.0%} ({n_train} images),"
            " val 269, test 269",
            "student": "resnet20",
            "teacher": "resnet56",
            "seeds": args.seeds,
            "epochs": args.epochs,
            "teacher_epochs": args.teacher_epochs,
            "swa_epochs": swa_epochs,
            "batch_size": 32,
            "kd_temperature": 4.0,
            "kd_weight": 0.9,
        },
        "teacher": {k: teacher[k] for k in ("test_top1", "train_seconds")},
        "training": summary,
        "tta": tta_summary,
        "effects_points": {
            "distilled_minus_alone": delta("distilled", "alone", summary),
            "swa_minus_plain": delta("swa", "alone", summary),
            **{f"tta_{m}_minus_none": delta(m, "none", tta_summary) for m in TTA_MODES[1:]},
        },
        "total_seconds": time.perf_counter() - start,
    }
    write_result("methods", json.loads(json.dumps(payload)))
    print("\nmethod            test top-1        time")
    for name, s in summary.items():
        t = s["test_top1"]
        print(
            f"{name:16}  {t['mean']:.3f} ± {t['std']:.3f}   {s['train_seconds']['mean']:.0f}s "
            f"(x{s['time_vs_alone']:.2f})"
        )
    for m, s in tta_summary.items():
        t = s["test_top1"]
        print(
            f"tta {m:12}  {t['mean']:.3f} ± {t['std']:.3f}   {s['ms_per_image']:.2f} ms/image "
            f"(x{s['passes']} passes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
