"""Time to accuracy: three tutorials' own recipes against ``resnetlab train``, same data, CPU.

Each tutorial side is written plainly in its tutorial's style (torchvision model, eager fp32,
a ``for x, y in loader`` loop with ``loss.item()`` every step); it is timed epoch by epoch
(training only; the test pass after each epoch is not counted) and its final test accuracy
is the target. resnetlab runs with its defaults for the job, given ``--time-budget`` = a third
of the tutorial's time (a tenth for feature extraction), and is timed the same way: the time
of its first epoch whose test accuracy reaches the target, and the accuracy it ends with.

Jobs, on the embedded digits (sklearn's 1,797 8x8 images; splits of resnetlab's loader):
  A. scratch: ResNet-18, 1 input channel, SGD lr 0.1 without momentum, batch 64, 5 epochs, 32².
  B. transfer: a ResNet-34 pre-trained here on digits 0-4 (3 channels, 64², 15 epochs, checked:
     the run stops below 95 % test top-1), saved as a .pth, transferred to digits 5-9: Adam
     lr 1e-4, batch 6, RandomResizedCrop + flip, once fine-tuning everything and once as a
     feature extractor. 64² instead of 224² and 5 epochs instead of 25 keep the run to minutes
     on 2 cores.
  C. CIFAR-style: ResNet(3,4,6,3) with a 3x3 stem, SGD lr 0.01, momentum 0.9, weight decay 1e-3,
     batch 16, ``gc.collect()`` each step, on the digits as 32² RGB; base width 16 (the
     tutorial's 64 costs 16x more) and 8 epochs instead of 20, for the same reason.
For the jobs that train a whole network (A, B fine-tuning, C) resnetlab runs a second time with
``--progressive``, same budget: the measurement that decides whether it should be a default.

Also: the training step's achieved GFLOP/s (job A, resnetlab side) next to the fp32 and, where
the CPU has it natively, bf16 throughput of a large convolution measured in the same run.
One thread (``torch.set_num_threads(1)``): these machines are shared, and two threads under
contention spin-wait in OpenMP.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from resnetlab.core.device import resolve_precision  # noqa: E402
from resnetlab.data.load import load_source  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402

# ----------------------------------------------------------------------- tutorial sides


def tutorial_fit(model, train_loader, test_loader, optimizer, epochs, collect=False):
    """The tutorials' loop; returns [(cumulative train seconds, test accuracy)] per epoch."""
    criterion = nn.CrossEntropyLoss()
    curve, seconds = [], 0.0
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        running = 0.0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()
            if collect:
                gc.collect()
        seconds += time.perf_counter() - t0
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        curve.append((seconds, correct / total))
    return curve


def digits_tensors(split, size: int, rgb: bool):
    x = split.images.float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return (x.repeat(1, 3, 1, 1) if rgb else x), split.labels.long()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR-10 tutorials' ResNet(BasicBlock, [3, 4, 6, 3]) with a base width argument."""

    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes=10, width=16):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, planes = [], width
        for i, n in enumerate(num_blocks):
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(BasicBlock(self.in_planes, planes, stride))
                self.in_planes = planes
            planes *= 2
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(self.in_planes, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class Folder(Dataset):
    def __init__(self, root: Path, transform):
        self.ds = torchvision.datasets.ImageFolder(str(root), transform=transform)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def transfer_transforms(size: int):
    norm = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            norm,
        ]
    )
    test = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(size / 0.875)),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            norm,
        ]
    )
    return train, test


# ---------------------------------------------------------------------- resnetlab side


def ours(budget_s: float, target: float, **settings) -> dict:
    """resnetlab train with its defaults plus ``settings``, within ``budget_s`` seconds."""
    cfg = resolve_config(dict(settings, time_budget=budget_s / 60, num_workers=0))
    trainer = Trainer(cfg, verbose=False)
    curve = []

    def on_epoch_end(row):  # test accuracy after each epoch, outside the timed training
        curve.append((trainer.train_seconds, trainer.evaluate("test")["top1"]))

    wall = time.perf_counter()
    summary = trainer.fit(on_epoch_end)
    reached = next((s for s, acc in curve if acc >= target), None)
    c = trainer.cfg
    applied = {
        "recipe": c.recipe or "scratch",
        "optimizer": c.optimizer,
        "lr": c.lr,
        "batch_size": c.batch_size,
        "warmup_epochs": c.warmup_epochs,
        "label_smoothing": c.label_smoothing,
        "progressive": c.progressive,
    }
    return {
        "epochs": trainer.cfg.epochs,
        "settings": applied,
        "curve": curve,
        "final_test_top1": curve[-1][1],
        "best_epoch_test_top1": summary["test_top1"],
        "seconds_to_target": reached,
        "train_seconds": trainer.train_seconds,
        "wall_seconds": time.perf_counter() - wall,
        "precision": trainer.precision,
        "trainer": trainer,
    }


def compare(name: str, tutorial_curve, run_ours, goal: float, progressive: bool = True) -> dict:
    """The tutorial's curve against resnetlab's defaults given ``goal`` x its time; with
    ``progressive``, also a second resnetlab run with --progressive, to decide the default."""
    target = tutorial_curve[-1][1]
    tut_seconds = tutorial_curve[-1][0]
    print(
        f"{name}: tutorial curve (s, test top-1) "
        + " ".join(f"({s:.1f}, {a:.3f})" for s, a in tutorial_curve),
        flush=True,
    )
    row = {
        "tutorial": {"curve": tutorial_curve, "seconds": tut_seconds, "test_top1": target},
        "goal_ratio": goal,
    }
    variants = {"resnetlab": {}, "resnetlab_progressive": {"progressive": True}}
    for key, extra in list(variants.items())[: 2 if progressive else 1]:
        mine = run_ours(tut_seconds * goal, target, **extra)
        label = f"{name}{' --progressive' if extra else ''}"
        print(
            f"{label}: resnetlab curve "
            + " ".join(f"({s:.1f}, {a:.3f})" for s, a in mine["curve"]),
            flush=True,
        )
        mine.pop("trainer")
        ratio = mine["seconds_to_target"] / tut_seconds if mine["seconds_to_target"] else None
        met = ratio is not None and ratio <= goal and mine["final_test_top1"] >= target
        mine.update(time_ratio=ratio, met=met)
        row[key] = mine
        print(
            f"{label:36} tutorial {tut_seconds:6.1f}s -> {target:.2%}   resnetlab "
            f"{mine['train_seconds']:6.1f}s -> {mine['final_test_top1']:.2%} ({mine['epochs']} "
            f"epochs), to target: {ratio and f'{ratio:.2f}x'}  goal <= {goal:.2f}: "
            f"{'met' if met else 'NOT met'}",
            flush=True,
        )
    # The defaults' result is the job's result (the keys earlier results had).
    row.update(time_ratio=row["resnetlab"]["time_ratio"], met=row["resnetlab"]["met"])
    return row


# ------------------------------------------------------------------------------- jobs


def job_scratch(tmp: Path) -> dict:
    src = load_source("digits", val_ratio=0.1, test_ratio=0.1, seed=0)
    xtr, ytr = digits_tensors(src.splits["train"], 32, rgb=False)
    xte, yte = digits_tensors(src.splits["test"], 32, rgb=False)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=64, shuffle=True)
    test = DataLoader(TensorDataset(xte, yte), batch_size=256)
    curve = tutorial_fit(model, train, test, torch.optim.SGD(model.parameters(), lr=0.1), 5)
    return compare(
        "A scratch digits",
        curve,
        lambda b, t, **kw: ours(
            b,
            t,
            data="digits",
            model="resnet18",
            input_size=32,
            out=str(tmp),
            name=f"a{len(kw)}",
            **kw,
        ),
        1 / 3,
    )


def write_digits_folder(root: Path, classes: list[int]) -> Path:
    """Digits of ``classes`` as RGB PNGs in DIR/train|test/<class>/ (resnetlab's splits)."""
    src = load_source("digits", val_ratio=0.0, test_ratio=0.5, seed=0)
    for split in ("train", "test"):
        s = src.splits[split]
        for i, (img, label) in enumerate(zip(s.images, s.labels.tolist())):
            if label in classes:
                d = root / split / str(label)
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img[0].numpy()).convert("RGB").save(d / f"{i}.png")
    return root


# Pre-training the transfer jobs' backbone (the stand-in for ImageNet weights): ResNet-34 on
# digits 0-4 at the transfer size, ImageNet mean/std (what the transfer side normalises with),
# the small-image augmentation (the digits are 8x8: RandomResizedCrop's 8 % crops of them hold
# no digit), SGD + nesterov at lr 0.02, cosine, 15 epochs (99 % test top-1 on 0-4). Transfer
# needs a backbone that has learned: below PRETRAIN_MIN test top-1 on 0-4 the benchmark stops
# instead of measuring transfer from noise.
PRETRAIN = dict(
    model="resnet34",
    preset="small",
    lr=0.02,
    epochs=15,
    warmup_epochs=1.0,
    mean=[0.485, 0.456, 0.406],
    std=[0.229, 0.224, 0.225],
)
PRETRAIN_MIN = 0.95


def pretrain_backbone(tmp: Path, size: int) -> tuple[Path, dict]:
    """The ResNet-34 the transfer jobs start from, as a torchvision-layout .pth, with its
    checked test accuracy on digits 0-4."""
    pre = write_digits_folder(tmp / "digits04", [0, 1, 2, 3, 4])
    cfg = resolve_config(
        dict(PRETRAIN, data=str(pre), input_size=size, out=str(tmp), name="pre", num_workers=0)
    )
    t = Trainer(cfg, verbose=False)
    summary = t.fit()
    acc = t.evaluate("test")["top1"]  # the last epoch's weights: the ones saved below
    info = {
        **{k: v for k, v in PRETRAIN.items() if k not in ("mean", "std")},
        "data": "digits 0-4",
        "input_size": size,
        "in_chans": 3,
        "normalisation": "ImageNet mean/std",
        "test_top1": acc,
        "images": {k: len(v) for k, v in t.data.source.splits.items()},
        "train_seconds": summary["train_seconds"],
        "precision": t.precision,
    }
    print(
        f"B pre-training: resnet34 on digits 0-4, {cfg.epochs} epochs at {size}²: test "
        f"top-1 {acc:.2%} ({summary['train_seconds']:.0f}s)",
        flush=True,
    )
    if acc < PRETRAIN_MIN:
        raise SystemExit(
            f"pre-training reached {acc:.2%} < {PRETRAIN_MIN:.0%} on digits 0-4: the backbone "
            "has not learned, and transfer from it would measure nothing; fix PRETRAIN"
        )
    pth = tmp / "resnet34-digits04.pth"
    torch.save(t.model.state_dict(), pth)
    return pth, info


def job_transfer(tmp: Path) -> dict:
    size = 64
    pth, pre_info = pretrain_backbone(tmp, size)
    data = write_digits_folder(tmp / "digits59", [5, 6, 7, 8, 9])
    train_tf, test_tf = transfer_transforms(size)
    results = {"pretraining": pre_info}
    for mode, goal in (("finetune", 1 / 3), ("feature-extract", 1 / 10)):
        torch.manual_seed(0)
        model = torchvision.models.resnet34(num_classes=5)  # the .pth's head: digits 0-4
        model.load_state_dict(torch.load(pth, weights_only=True))
        if mode == "feature-extract":
            for p in model.parameters():
                p.requires_grad = False
        model.fc = nn.Linear(model.fc.in_features, 5)
        params = model.parameters() if mode == "finetune" else model.fc.parameters()
        train = DataLoader(Folder(data / "train", train_tf), batch_size=6, shuffle=True)
        test = DataLoader(Folder(data / "test", test_tf), batch_size=32)
        curve = tutorial_fit(model, train, test, torch.optim.Adam(params, lr=1e-4), 5)
        results[mode] = compare(
            f"B transfer {mode}",
            curve,
            lambda b, t, m=mode, **kw: ours(
                b,
                t,
                data=str(data),
                model="resnet34",
                weights=str(pth),
                mode=m,
                input_size=size,
                out=str(tmp),
                name=f"{m}{len(kw)}",
                **kw,
            ),
            goal,
            progressive=mode == "finetune",
        )
    return results


def job_cifar(tmp: Path) -> dict:
    src = load_source("digits", val_ratio=0.1, test_ratio=0.1, seed=0)
    xtr, ytr = digits_tensors(src.splits["train"], 32, rgb=True)
    xte, yte = digits_tensors(src.splits["test"], 32, rgb=True)
    torch.manual_seed(0)
    model = CifarResNet(width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=16, shuffle=True)
    test = DataLoader(TensorDataset(xte, yte), batch_size=256)
    curve = tutorial_fit(model, train, test, opt, 8, collect=True)
    return compare(
        "C CIFAR-style digits",
        curve,
        lambda b, t, **kw: ours(
            b, t, data="digits", in_chans=3, input_size=32, out=str(tmp), name=f"c{len(kw)}", **kw
        ),
        1 / 3,
    )


# ---------------------------------------------------------------------------- GFLOP/s


def conv_throughput(dtype: torch.dtype, reps: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution forward (64 x 256 -> 256 channels, 28²)."""
    x = torch.randn(64, 256, 28, 28).to(memory_format=torch.channels_last)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    flops = 2 * 64 * 256 * 28 * 28 * 256 * 9
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        conv(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t0)
    return flops / min(times) / 1e9


def step_flops(model: nn.Module, batch: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(batch).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_throughput(tmp: Path) -> dict:
    """Job A's resnetlab training step: FLOPs counted once, time measured over 2 epochs."""
    cfg = resolve_config(
        dict(
            data="digits",
            model="resnet18",
            input_size=32,
            epochs=2,
            out=str(tmp),
            name="gflops",
            num_workers=0,
        )
    )
    t = Trainer(cfg, verbose=False)
    x = torch.randn(cfg.batch_size, 1, 32, 32).to(memory_format=torch.channels_last)
    flops = step_flops(t.model, x)
    t.fit()
    steps = 2 * len(t.train_loader)
    return {
        "precision": t.precision,
        "flops_per_step": flops,
        "achieved_gflops": flops * steps / t.train_seconds / 1e9,
    }


def progressive_summary(jobs: dict) -> dict:
    """Per job run both ways: time to target and final accuracy with and without
    --progressive, and whether it helped (reached the target sooner, or reached it at all
    where the default did not, and ended no less accurate)."""
    rows = {
        "scratch_digits": jobs["scratch_digits"],
        "transfer_finetune": jobs["transfer"]["finetune"],
        "cifar_style_digits": jobs["cifar_style_digits"],
    }
    out = {}
    for name, row in rows.items():
        off, on = row["resnetlab"], row.get("resnetlab_progressive")
        if on is None:
            continue
        a, b = off["seconds_to_target"], on["seconds_to_target"]
        sooner = b is not None and (a is None or b < a)
        final = [off["final_test_top1"], on["final_test_top1"]]
        out[name] = {
            "epochs": [off["epochs"], on["epochs"]],
            "seconds_to_target": [a, b],
            "final_test_top1": final,
            "helped": sooner and final[1] >= final[0],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-tta-"))
    jobs = {
        "scratch_digits": job_scratch(tmp),
        "transfer": job_transfer(tmp),
        "cifar_style_digits": job_cifar(tmp),
    }
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    machine = {
        "conv_fp32_gflops": conv_throughput(torch.float32),
        "conv_bf16_gflops": conv_throughput(torch.bfloat16) if bf16 else None,
        "train_step": step_throughput(tmp),
    }
    step = machine["train_step"]
    print(
        f"training step {step['achieved_gflops']:.1f} GFLOP/s ({step['precision']}); a large "
        f"conv: fp32 {machine['conv_fp32_gflops']:.1f}, bf16 "
        f"{machine['conv_bf16_gflops'] or 0:.1f} GFLOP/s"
    )
    progressive = progressive_summary(jobs)
    for name, row in progressive.items():
        print(
            f"--progressive on {name}: seconds to target {row['seconds_to_target']}, final "
            f"{row['final_test_top1']} (off, on): {'helped' if row['helped'] else 'no help'}"
        )
    write_result(
        "time_to_accuracy",
        {"threads": args.threads, "jobs": jobs, "machine": machine, "progressive": progressive},
    )


if __name__ == "__main__":
    main()
