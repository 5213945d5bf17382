"""Training speed: the engine's defaults vs the tutorial loop, side by side in one run.

Reference: a torchvision-style model in eager fp32 (NCHW), PIL + torchvision transforms in a
2-worker DataLoader, ``loss.item()`` every step, in a plain Python process. Ours: what
``resnetlab train`` runs by default (bf16 autocast where the CPU has it, channels_last, data
decoded once into memory, no per-step sync, the allocator setting of ``resnetlab.core.runtime``).
Each side runs in its own process, the epochs alternate; ``ours_default_malloc`` is ours
without the allocator setting, to show what that one lever is worth, and ``ours_compile``
is ours with ``--compile`` (compiled in the untimed warm-up epoch, so the compile time is not
counted). Also checks that the fast defaults lose no accuracy: digits trained with the
defaults and with --precision fp32, over several seeds (one test image is 0.37 points).

Where the ratio comes from: a second pass times every convolution call on both sides (oneDNN
runs them for both), which gives how much faster the bf16 convolutions are than the fp32
ones on this CPU, what share of each side's time they take, and the ceiling: ours' images/s
if everything but its convolutions took no time at all, over the reference's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).parent))
from common import Worker, alternate, make_jpeg_folder, serve_worker, write_result  # noqa: E402
from resnetlab import create_model  # noqa: E402
from resnetlab.core.device import resolve_precision  # noqa: E402
from resnetlab.core.runtime import tune_allocator  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402


def reference_runner(model: nn.Module, folder: Path, transform, batch: int):
    loader = DataLoader(
        datasets.ImageFolder(str(folder), transform=transform),
        batch_size=batch,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        drop_last=True,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def run():
        n, total = 0, 0.0
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()  # the tutorial's per-step host sync
            n += x.shape[0]
        return n

    return run


def ours_runner(
    folder: Path, model: str, input_size: int, batch: int, preset: str, out: Path, use_compile: bool
):
    cfg = resolve_config(
        dict(
            data=str(folder),
            model=model,
            input_size=input_size,
            batch_size=batch,
            preset=preset,
            val_ratio=0.0,
            test_ratio=0.0,
            epochs=1000,
            out=str(out),
            name=f"bench-{model}",
            compile=use_compile,
        ),
    )
    trainer = Trainer(cfg, verbose=False)

    def run():
        trainer.train_one_epoch()
        return len(trainer.train_loader) * batch

    return run, trainer.precision


CASES = {
    # name: (model, input size, batch, preset, folder)
    "resnet18_224_batch16": ("resnet18", 224, 16, "imagenet", "jpeg"),
    "resnet20_32_batch128": ("resnet20", 32, 128, "cifar", "small"),
}


def reference_transform(case: str):
    if case.startswith("resnet18"):
        return v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(224),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.25] * 3),
        ]
    )


class ConvolutionTimer(TorchDispatchMode):
    """Wall time spent inside convolution calls (forward and backward) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] not in ("convolution", "convolution_backward"):
            return func(*args, **(kwargs or {}))
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - t0
        return out


def timing_convolutions(job):
    calls = 0

    def run():
        nonlocal calls
        calls += 1
        if calls == 1:  # the warm-up: DataLoader workers start here, outside the timer
            return job(), {"conv_seconds": float("nan")}
        with ConvolutionTimer() as timer:
            images = job()
        return images, {"conv_seconds": timer.seconds}

    return run


def worker(side: str, case: str, tmp: Path) -> None:
    """One side of one case, in this process; ``ours`` starts as the ``resnetlab`` command does.
    A side named ``NAME:convs`` is NAME with its convolution calls timed."""
    side, _, convs = side.partition(":")
    model, size, batch, preset, folder = CASES[case]
    classes = len([d for d in (tmp / folder).iterdir() if d.is_dir()])
    if side == "reference":
        net = (
            torchvision.models.resnet18
            if model == "resnet18"
            else lambda num_classes: create_model(model, num_classes=num_classes)
        )
        job = reference_runner(
            net(num_classes=classes), tmp / folder, reference_transform(case), batch
        )
    else:
        if side != "ours_default_malloc":
            tune_allocator()
        use_compile = side == "ours_compile"  # compiled during the untimed warm-up epoch
        out = tmp / (side + ("-convs" if convs else ""))
        job, _ = ours_runner(tmp / folder, model, size, batch, preset, out, use_compile)
    serve_worker(timing_convolutions(job) if convs else job)


SIDES = ("reference", "ours", "ours_default_malloc", "ours_compile")


def case(name, tmp: Path, reps: int):
    workers = {side: Worker(__file__, side, name, str(tmp)) for side in SIDES}
    try:
        r = alternate(workers, reps)
    finally:
        for w in workers.values():
            w.close()
    for side in SIDES[1:]:
        r[side]["ratio"] = r[side]["median"] / r["reference"]["median"]
    r["ratio"] = r["ours"]["ratio"]
    r["convolutions"] = convolution_share(name, tmp, reps, r["reference"]["median"])
    print(
        f"{name:22} reference {r['reference']['median']:8.1f} img/s   ours "
        f"{r['ours']['median']:8.1f} img/s   x{r['ratio']:.2f}   (default malloc "
        f"x{r['ours_default_malloc']['ratio']:.2f}, --compile x{r['ours_compile']['ratio']:.2f})",
        flush=True,
    )
    c = r["convolutions"]
    print(
        f"{'':22} convolutions: bf16 x{c['conv_speedup']:.2f} faster than fp32, "
        f"{c['ours']['share']:.0%} of ours' time ({c['reference']['share']:.0%} of the "
        f"reference's); ours with every other op free: x{c['ceiling_ratio']:.2f}",
        flush=True,
    )
    return r


def convolution_share(name: str, tmp: Path, reps: int, reference_rate: float) -> dict:
    """Both sides again, their convolution calls timed (this pass adds a little overhead)."""
    workers = {side: Worker(__file__, f"{side}:convs", name, str(tmp)) for side in SIDES[:2]}
    runs: dict[str, list[dict]] = {side: [] for side in workers}
    try:
        for w in workers.values():
            w()  # warm-up
        for _ in range(max(1, reps // 2)):
            for side, w in workers.items():
                runs[side].append(w())
    finally:
        for w in workers.values():
            w.close()
    out = {}
    for side, replies in runs.items():
        per_image = statistics.median(r["conv_seconds"] / r["images"] for r in replies)
        share = statistics.median(r["conv_seconds"] / r["seconds"] for r in replies)
        out[side] = {"conv_seconds_per_image": per_image, "share": share}
    ours, ref = out["ours"]["conv_seconds_per_image"], out["reference"]["conv_seconds_per_image"]
    out["conv_speedup"] = ref / ours
    out["ceiling_ratio"] = (1 / ours) / reference_rate
    return out


def digits_accuracy(out: Path, precision: str, seed: int) -> dict:
    cfg = resolve_config(
        dict(out=str(out), name=f"digits-{precision}-{seed}", precision=precision, seed=seed)
    )
    summary = Trainer(cfg, verbose=False).fit()
    return {
        k: summary[k]
        for k in ("test_top1", "best_val_top1", "train_images_per_second", "precision")
    }


def accuracy_check(out: Path, seeds: list[int]) -> dict:
    acc = {}
    for precision in ("auto", "fp32"):
        runs = [digits_accuracy(out, precision, s) for s in seeds]
        acc[precision] = {
            "precision": runs[0]["precision"],
            "seeds": seeds,
            "test_top1": [r["test_top1"] for r in runs],
            "mean_test_top1": statistics.mean(r["test_top1"] for r in runs),
            "train_images_per_second": [r["train_images_per_second"] for r in runs],
        }
    acc["delta_points"] = 100 * (acc["auto"]["mean_test_top1"] - acc["fp32"]["mean_test_top1"])
    return acc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="digits runs per precision")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "TMP"))
    args = parser.parse_args()
    if args.worker:
        side, name, tmp = args.worker
        worker(side, name, Path(tmp))
        return
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-train-bench-"))
    make_jpeg_folder(tmp / "jpeg", classes=4, per_class=16, sizes=[(256, 256), (320, 240)])
    make_jpeg_folder(tmp / "small", classes=10, per_class=128, sizes=[(32, 32)])
    results = {name: case(name, tmp, args.reps) for name in CASES}
    precision = resolve_precision("auto", torch.device("cpu"))
    payload = {
        "repetitions": args.reps,
        "unit": "images/s",
        "ours_precision": precision,
        "results": results,
    }
    if not args.skip_accuracy:
        acc = accuracy_check(tmp / "runs", list(range(args.seeds)))
        payload["digits_accuracy"] = acc
        print(
            f"digits test top-1 over {args.seeds} seeds: defaults ({acc['auto']['precision']}) "
            f"{acc['auto']['mean_test_top1']:.2%}, fp32 {acc['fp32']['mean_test_top1']:.2%} "
            f"({acc['delta_points']:+.2f} points)"
        )
    write_result("train_throughput", payload)


if __name__ == "__main__":
    main()
