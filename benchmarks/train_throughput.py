"""Training speed: the engine's defaults vs the tutorial loop, side by side in one run.

Reference: a torchvision-style model in eager fp32 (NCHW), PIL + torchvision transforms in a
2-worker DataLoader, ``loss.item()`` every step. Ours: ``resnetlab train`` defaults (bf16
autocast where the CPU has it, channels_last, data decoded once into memory, no per-step
sync). Also checks that the fast defaults lose no accuracy: digits trained with the
defaults and with --precision fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, make_jpeg_folder, write_result  # noqa: E402
from resnetlab import create_model  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402


def reference_runner(model: nn.Module, folder: Path, transform, batch: int):
    loader = DataLoader(
        datasets.ImageFolder(str(folder), transform=transform),
        batch_size=batch, shuffle=True, num_workers=2, persistent_workers=True, drop_last=True,
    )  # fmt: skip
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


def ours_runner(folder: Path, model: str, input_size: int, batch: int, preset: str, out: Path):
    cfg = resolve_config(
        dict(data=str(folder), model=model, input_size=input_size, batch_size=batch,
             preset=preset, val_ratio=0.0, test_ratio=0.0, epochs=1000, out=str(out),
             name=f"bench-{model}"),
    )  # fmt: skip
    trainer = Trainer(cfg, verbose=False)

    def run():
        trainer.train_one_epoch()
        return len(trainer.train_loader) * batch

    return run, trainer.precision


def case(name, ref, ours, reps):
    r = alternate({"reference": ref, "ours": ours}, reps)
    r["ratio"] = r["ours"]["median"] / r["reference"]["median"]
    print(
        f"{name:22} reference {r['reference']['median']:8.1f} img/s   ours "
        f"{r['ours']['median']:8.1f} img/s   x{r['ratio']:.2f}",
        flush=True,
    )
    return r


def digits_accuracy(out: Path, precision: str) -> dict:
    cfg = resolve_config(dict(out=str(out), name=f"digits-{precision}", precision=precision))
    summary = Trainer(cfg, verbose=False).fit()
    return {k: summary[k] for k in ("test_top1", "best_val_top1", "train_images_per_second",
                                    "precision")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-train-bench-"))
    results = {}

    big = make_jpeg_folder(tmp / "jpeg", classes=4, per_class=16, sizes=[(256, 256), (320, 240)])
    ref_tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    ours, precision = ours_runner(big, "resnet18", 224, 16, "imagenet", tmp / "runs")
    ref = reference_runner(torchvision.models.resnet18(num_classes=4), big, ref_tf, 16)
    results["resnet18_224_batch16"] = case("resnet18 224 batch 16", ref, ours, args.reps)

    small = make_jpeg_folder(tmp / "small", classes=10, per_class=128, sizes=[(32, 32)])
    ref_tf = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize([0.5] * 3, [0.25] * 3)])  # fmt: skip
    ours, _ = ours_runner(small, "resnet20", 32, 128, "cifar", tmp / "runs")
    ref = reference_runner(create_model("resnet20", num_classes=10), small, ref_tf, 128)
    results["resnet20_32_batch128"] = case("resnet20 32 batch 128", ref, ours, args.reps)

    payload = {"repetitions": args.reps, "unit": "images/s", "ours_precision": precision,
               "results": results}  # fmt: skip
    if not args.skip_accuracy:
        acc = {p: digits_accuracy(tmp / "runs", p) for p in ("auto", "fp32")}
        acc["delta_points"] = 100 * (acc["auto"]["test_top1"] - acc["fp32"]["test_top1"])
        payload["digits_accuracy"] = acc
        print(
            f"digits test top-1: defaults ({acc['auto']['precision']}) "
            f"{acc['auto']['test_top1']:.2%}, fp32 {acc['fp32']['test_top1']:.2%}"
        )
    write_result("train_throughput", payload)


if __name__ == "__main__":
    main()
