"""GPU check: one script, under 8 minutes on one GPU, that runs as it is on any CUDA machine.

    python benchmarks/gpu_check.py [--out FILE] [--dry-run]

No GPU has run this project yet; this is what to run on the first one. Each check runs on its
own (one failing is recorded with its error and the others go on) and the results go to one
JSON file (default ``benchmarks/results/gpu_check.json``); a line per check is printed as it
ends. Without CUDA it says so in one line and exits 0; ``--dry-run`` runs every check at toy
sizes on the CPU instead (the CUDA-only ones are skipped), to try the script itself.

Checks, through resnetlab's own code paths (``Trainer``, ``Predictor``, the CLI under torchrun):

- ``amp_bf16``, ``amp_fp16``: a short training of a CIFAR ResNet-20 on the digits with bf16
  autocast (where the GPU has it) and with fp16 autocast and its GradScaler: finite losses that
  fall, the scaler's scale, the test top-1.
- ``channels_last``: the trained model's convolutions are channels_last, and its outputs match
  the same weights in the contiguous layout.
- ``compile``: ``--compile`` trains (the compile time and the epoch time).
- ``resume``: bit-for-bit resume on the GPU, deterministic kernels (fp32, and the AMP precision
  ``auto`` gives): stopped after epoch 1 and resumed, the weights ``torch.equal`` to a run
  straight through and the per-step losses equal.
- ``backend_auto``: ``--backend auto`` on CUDA (the choice and its note) and its probabilities
  against the CPU's fp32 ones for the same images.
- ``ddp_nccl``: with 2+ GPUs, ``torchrun --nproc_per_node N -m resnetlab train``: DDP over NCCL,
  every rank ending with the same weights (their SHA-256 lines); with one GPU, a one-process
  NCCL group and an all-reduce (NCCL refuses two ranks on one GPU).
- ``jpeg_decode``: resnetlab decodes JPEGs on the CPU (PIL; torchvision's CPU decoder for
  shards), so no GPU decode is used; recorded is whether torchvision's nvJPEG path works here
  and how far it is from the CPU decode, for when it is.

Measurements (synthetic data in memory; side by side, alternating, median of 3 after a warm-up):

- ``resnet50_train``: ResNet-50 training at 224x224, img/s: resnetlab's path (its model,
  channels_last, AMP, its fused optimizer, batches normalised and augmented on the GPU by its
  BatchTransform, no host sync per step), then with ``torch.compile``, against the torchvision
  reference loop (``references/classification/train.py``: eager, a ``loss.item()`` and top-1/5
  each step) in fp32 and with its ``--amp``; and against NVIDIA's published 2,470 img/s on one
  A100 (AMP + DALI, DeepLearningExamples), as a ratio.
- ``cifar_epoch``: seconds per epoch of ``resnetlab train --data cifar10:...`` (ResNet-20 and
  ResNet-56, batch 128) on a synthetic CIFAR-10 (50,000 random 32x32 images in the original
  pickle format, read by resnetlab's own loader).
"""

from __future__ import annotations

import os

# Deterministic cuBLAS needs this before CUDA is initialised (the resume check).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "results" / "gpu_check.json"
NVIDIA_A100_IMG_S = 2470  # ResNet-50 v1.5 training, 1x A100 80GB, AMP + DALI (NVIDIA DLE)
BUDGET_S = 7 * 60  # the optional parts (compile, ResNet-56) are skipped past this


class Check:
    """Runs the checks one by one, each in its own try, and keeps their results."""

    def __init__(self, dry: bool) -> None:
        self.dry, self.results, self.start = dry, {}, time.perf_counter()
        self.device = torch.device("cpu" if dry else "cuda")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = fn(self)
            result = {"ok": True, **(result or {})}
        except Skip as exc:
            result = {"ok": None, "skipped": str(exc)}
        except Exception as exc:  # recorded, and the next check runs
            result = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.results[name] = result
        state = {True: "ok", False: "FAILED", None: "skipped"}[result["ok"]]
        detail = result.get("error") or result.get("skipped") or result.get("summary", "")
        print(f"{name:16} {state:8} {result['seconds']:7.1f}s  {detail}", flush=True)


class Skip(Exception):
    pass


# ------------------------------------------------------------------------------- helpers


def _train(ck: Check, out: Path, name: str, **kw):
    """A resnetlab Trainer on the digits (CIFAR ResNet-20 unless told), fitted; (trainer,
    summary). ``max_steps`` stops it resumably."""
    from resnetlab.train import RunStopped, Trainer, resolve_config

    settings = dict(
        model="resnet20",
        data="digits",
        epochs=2,
        batch_size=128,
        out=str(out),
        name=name,
        num_workers=0,
        device=str(ck.device),
    )
    if ck.dry:
        settings.update(model_kwargs={"widths": [4, 8, 8]}, epochs=min(kw.get("epochs", 2), 2))
    settings.update(kw)
    resume = settings.pop("resume", None)
    trainer = Trainer(resolve_config(settings), resume=resume, verbose=False)
    summary = None
    with contextlib.suppress(RunStopped):
        summary = trainer.fit()
    return trainer, summary


def _losses_fall(trainer) -> tuple[bool, float, float]:
    losses = trainer.step_losses
    k = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    return finite and last < first, first, last


# -------------------------------------------------------------------------------- checks


def check_amp(precision: str):
    def run(ck: Check):
        if not ck.dry and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise Skip("this GPU has no native bf16 (Ampere or later)")
        if ck.dry and precision == "fp16":
            raise Skip("fp16 autocast with a GradScaler needs CUDA")
        with tempfile.TemporaryDirectory() as tmp:
            trainer, s = _train(ck, Path(tmp), precision, precision=precision)
            falls, first, last = _losses_fall(trainer)
            if not falls:
                raise AssertionError(
                    f"losses did not fall or were not finite ({first:.3f} -> {last:.3f})"
                )
            out = {
                "precision": trainer.precision,
                "loss_first": first,
                "loss_last": last,
                "test_top1": s["test_top1"],
                "summary": f"loss {first:.3f} -> {last:.3f}, test top-1 {s['test_top1']:.3f}",
            }
            if trainer.scaler is not None:
                out["grad_scale"] = float(trainer.scaler.get_scale())
                out["summary"] += f", grad scale {out['grad_scale']:g}"
            elif precision == "fp16":
                raise AssertionError("fp16 ran without a GradScaler")
            return out

    return run


def check_channels_last(ck: Check):
    import copy

    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _train(ck, Path(tmp), "cl", epochs=1, precision="fp32")
        model = trainer.eval_model().eval()
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        is_cl = conv.weight.is_contiguous(memory_format=torch.channels_last)
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        x = torch.randn(32, trainer.data.channels, 32, 32, device=ck.device)
        with torch.no_grad():
            a = model(x.contiguous(memory_format=torch.channels_last))
            b = plain(x)
        diff = float((a - b).abs().max())
        if not is_cl or diff > 1e-3:
            raise AssertionError(f"channels_last weights {is_cl}, max |difference| {diff:.2e}")
        return {
            "max_abs_diff": diff,
            "summary": f"weights channels_last, outputs within {diff:.1e}",
        }


def check_compile(ck: Check):
    with tempfile.TemporaryDirectory() as tmp:
        trainer, s = _train(ck, Path(tmp), "compiled", epochs=2, compile=True)
        first, second = (row["seconds"] for row in trainer.history[:2])
        falls, a, b = _losses_fall(trainer)
        if not falls:
            raise AssertionError(f"compiled training's losses did not fall ({a:.3f} -> {b:.3f})")
        return {
            "epoch_seconds": [first, second],
            "test_top1": s["test_top1"],
            "summary": f"epoch 1 (compiling) {first:.1f}s, epoch 2 {second:.1f}s",
        }


def check_resume(ck: Check):
    out = {}
    for precision in ("fp32", "auto"):
        with tempfile.TemporaryDirectory() as tmp:
            kw = dict(precision=precision, deterministic=True)
            straight, _ = _train(ck, Path(tmp) / "a", "run", **kw)
            steps = len(straight.train_loader)
            first, _ = _train(ck, Path(tmp) / "b", "run", max_steps=steps, **kw)
            rest, _ = _train(ck, Path(tmp) / "b", "run", resume=Path(tmp) / "b" / "run", **kw)
            a, b = straight.model.state_dict(), rest.model.state_dict()
            equal = all(torch.equal(a[k], b[k]) for k in a)
            losses = first.step_losses + rest.step_losses == straight.step_losses
            out[straight.precision] = {"weights_equal": equal, "losses_equal": losses}
    ok = all(v["weights_equal"] and v["losses_equal"] for v in out.values())
    if not ok:
        raise AssertionError(f"resume differs from a straight run: {out}")
    return {**out, "summary": "torch.equal after stop + resume (" + ", ".join(out) + ")"}


def check_backend_auto(ck: Check):
    import numpy as np
    from PIL import Image

    from resnetlab.inference.predict import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = _train(ck, Path(tmp), "served", epochs=1)
        run = trainer.run_dir
        rng = np.random.default_rng(0)
        images = [
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L") for _ in range(8)
        ]
        auto = Predictor(run, backend="auto", device=str(ck.device))
        cpu = Predictor(run, backend="torch", device="cpu", precision="fp32")
        batch = torch.stack([auto.preprocess(im) for im in images])
        pa, pc = auto.probabilities(batch).cpu(), cpu.probabilities(batch).cpu()
        diff = float((pa - pc).abs().max())
        limit = 1e-4 if auto.precision == "fp32" else 2e-2
        note = auto.choice.note if auto.choice else ""
        if auto.backend.name != "torch" and not ck.dry:
            raise AssertionError(f"--backend auto chose {auto.backend.name} on CUDA")
        if diff > limit:
            raise AssertionError(f"probabilities differ from the CPU's by {diff:.2e} ({note})")
        return {
            "backend": auto.backend.name,
            "precision": auto.precision,
            "note": note,
            "max_prob_diff_vs_cpu_fp32": diff,
            "summary": f"{note}; probabilities within {diff:.1e} of the CPU's",
        }


def check_ddp(ck: Check):
    if ck.dry:
        raise Skip("DDP over NCCL needs CUDA (the CPU's gloo path has its own tests)")
    n = torch.cuda.device_count()
    if n < 2:
        import torch.distributed as dist

        # NCCL refuses two ranks on one GPU: a group of one, to see NCCL itself work.
        with tempfile.NamedTemporaryFile() as f:
            dist.init_process_group("nccl", init_method=f"file://{f.name}", rank=0, world_size=1)
            try:
                t = torch.ones(4, device="cuda")
                dist.all_reduce(t)
                ok = bool((t == 1).all())
            finally:
                dist.destroy_process_group()
        if not ok:
            raise AssertionError("a one-process NCCL all-reduce changed its tensor")
        return {
            "gpus": 1,
            "nccl_version": ".".join(map(str, torch.cuda.nccl.version())),
            "summary": "1 GPU: NCCL group of one works; DDP across GPUs needs 2+",
        }
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "resnetlab",
            "train",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--out",
            tmp,
            "--name",
            "ddp",
            "--num-workers",
            "0",
            "--quiet",
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        shas = {
            line.split()[-1] for line in p.stdout.splitlines() if "final weights sha256" in line
        }
        if p.returncode != 0 or len(shas) != 1:
            raise AssertionError(
                f"torchrun exit {p.returncode}, weight digests {shas}: "
                f"{p.stderr.strip().splitlines()[-3:]}"
            )
        return {"gpus": n, "summary": f"{n} ranks over NCCL ended with one set of weights"}


def check_jpeg(ck: Check):
    import numpy as np
    from PIL import Image
    from torchvision.io import decode_jpeg

    if ck.dry:
        raise Skip("nvJPEG needs CUDA")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    cpu = decode_jpeg(data)
    gpu = decode_jpeg(data, device="cuda").cpu()
    diff = int((cpu.int() - gpu.int()).abs().max())
    return {
        "used_by_resnetlab": False,
        "nvjpeg_max_abs_diff_vs_cpu": diff,
        "summary": f"not used (resnetlab decodes on the CPU); nvJPEG works, within {diff} "
        "grey levels of the CPU decode",
    }


# -------------------------------------------------------------------------- measurements


def _timed(step, steps: int, max_seconds: float, sync) -> float:
    """Images/s over up to ``steps`` steps (stopped after ``max_seconds``)."""
    sync()
    t0, n, images = time.perf_counter(), 0, 0
    while n < steps and (n == 0 or time.perf_counter() - t0 < max_seconds):
        images += step()
        n += 1
    sync()
    return images / (time.perf_counter() - t0)


def _ours(ck: Check, batch: int, size: int, compile: bool = False):
    from resnetlab import create_model
    from resnetlab.core.device import autocast, resolve_precision
    from resnetlab.data.transforms import BatchTransform
    from resnetlab.train.config import TrainConfig
    from resnetlab.train.optim import build_optimizer

    dev = ck.device
    precision = resolve_precision("auto", dev)
    model = create_model("resnet50", num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    cfg = TrainConfig(model="resnet50", batch_size=batch, weight_decay=1e-4, label_smoothing=0.1)
    opt = build_optimizer(model, cfg)
    tf = BatchTransform(
        "imagenet", size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), train=True, geometric=True
    )
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    forward = torch.compile(model) if compile else model

    def step() -> int:
        x = tf(x8, gen)
        with autocast(precision, dev):
            loss = criterion(forward(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return batch

    return step, precision


def _reference(ck: Check, batch: int, size: int, amp: bool):
    """torchvision's references/classification/train.py loop: eager torchvision resnet50, SGD
    momentum 0.9, wd 1e-4, ``--amp`` = fp16 autocast + GradScaler; each step a loss.item() and
    the top-1/5 it logs."""
    import torchvision

    dev = ck.device
    model = torchvision.models.resnet50().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step() -> int:
        with torch.autocast(dev.type, enabled=scaler is not None):
            out = model(x)
            loss = criterion(out, y)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        top = out.topk(5, 1).indices
        acc1 = (top[:, 0] == y).float().mean().item()
        acc5 = (top == y[:, None]).any(1).float().mean().item()
        _ = (loss.item(), acc1, acc5, opt.param_groups[0]["lr"])  # metric_logger.update(...)
        return batch

    return step


def measure_resnet50(ck: Check):
    if ck.dry:
        batch, size, steps, seconds, reps = 2, 64, 2, 2.0, 1
    else:
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        batch = 256 if mem >= 70 else 128 if mem >= 24 else 64
        size, steps, seconds, reps = 224, 60, 8.0, 3
    sync = torch.cuda.synchronize if ck.device.type == "cuda" else (lambda: None)
    sides = {}
    while True:
        try:
            ours, precision = _ours(ck, batch, size)
            sides = {
                f"resnetlab ({precision}, channels_last)": ours,
                "torchvision reference fp32": _reference(ck, batch, size, amp=False),
                "torchvision reference --amp": _reference(ck, batch, size, amp=True),
            }
            for fn in sides.values():  # warm-up (cuDNN autotuning, allocator)
                for _ in range(3 if not ck.dry else 1):
                    fn()
            break
        except torch.cuda.OutOfMemoryError:
            sides = {}
            torch.cuda.empty_cache()
            if batch <= 32:
                raise
            batch //= 2
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            rates[name].append(_timed(fn, steps, seconds, sync))
    compiled = None
    del ours, fn
    sides.clear()
    if ck.elapsed() < BUDGET_S - 150 and not ck.dry:  # compiling ResNet-50 on a CPU: minutes
        torch.cuda.empty_cache()
        step, precision = _ours(ck, batch, size, compile=True)
        t0 = time.perf_counter()
        step()  # compiles
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            step()
        compiled = {"img_s": _timed(step, steps, seconds, sync), "compile_seconds": compile_s}
    med = {name: statistics.median(r) for name, r in rates.items()}
    ours_name = next(iter(med))
    ref = med["torchvision reference fp32"]
    out = {
        "gpu": torch.cuda.get_device_name(0) if ck.device.type == "cuda" else "cpu (dry run)",
        "batch_size": batch,
        "input_size": size,
        "repetitions": reps,
        "img_s": {name: {"median": m, "samples": rates[name]} for name, m in med.items()},
        "compiled": compiled,
        "ratio_vs_reference_fp32": med[ours_name] / ref,
        "ratio_vs_reference_amp": med[ours_name] / med["torchvision reference --amp"],
        "nvidia_a100_img_s": NVIDIA_A100_IMG_S,
        "ratio_vs_nvidia_a100": med[ours_name] / NVIDIA_A100_IMG_S,
    }
    best = max(med[ours_name], compiled["img_s"] if compiled else 0)
    out["summary"] = (
        f"{med[ours_name]:.0f} img/s (compiled {compiled['img_s']:.0f})"
        if compiled
        else f"{med[ours_name]:.0f} img/s"
    ) + (
        f"; reference fp32 {ref:.0f}, --amp {med['torchvision reference --amp']:.0f}; "
        f"{best / NVIDIA_A100_IMG_S:.2f}x NVIDIA's A100 figure"
    )
    return out


def _synthetic_cifar(root: Path, train: int, test: int) -> Path:
    """A CIFAR-10 python-version folder of random images, in the original pickle format."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        return {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(train // 5), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return root


def measure_cifar_epoch(ck: Check):
    train, test = (500, 100) if ck.dry else (50_000, 10_000)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = f"cifar10:{_synthetic_cifar(Path(tmp) / 'cifar', train, test)}"
        for model in ("resnet20", "resnet56"):
            if model == "resnet56" and ck.elapsed() > BUDGET_S - 60 and not ck.dry:
                out[model] = "skipped: the time budget"
                continue
            trainer, _ = _train(
                ck, Path(tmp) / "runs", model, model=model, data=data, epochs=2, batch_size=128
            )
            secs = [row["seconds"] for row in trainer.history]
            out[model] = {
                "epoch_seconds": secs,
                "precision": trainer.precision,
                "train_images": len(trainer.data.source.splits["train"]),
            }
    shown = {m: v["epoch_seconds"][-1] for m, v in out.items() if isinstance(v, dict)}
    out["summary"] = ", ".join(f"{m} {s:.1f}s/epoch" for m, s in shown.items())
    return out


def environment() -> dict:
    import platform

    import torchvision

    import resnetlab

    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resnetlab": resnetlab.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "cpu": platform.processor(),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["driver_capability"] = list(torch.cuda.get_device_capability(0))
    return env


CHECKS = [
    ("amp_bf16", check_amp("bf16")),
    ("amp_fp16", check_amp("fp16")),
    ("channels_last", check_channels_last),
    ("compile", check_compile),
    ("resume", check_resume),
    ("backend_auto", check_backend_auto),
    ("ddp_nccl", check_ddp),
    ("jpeg_decode", check_jpeg),
    ("resnet50_train", measure_resnet50),
    ("cifar_epoch", measure_cifar_epoch),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the JSON file to write")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the checks at toy sizes on the CPU (no GPU needed)",
    )
    p.add_argument("--only", nargs="+", choices=[n for n, _ in CHECKS], help="these checks only")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu_check: no CUDA device here (torch {torch.__version__}, {build}); nothing to check"
        )
        return 0
    ck = Check(dry=args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)
    for name, fn in CHECKS:
        if args.only is None or name in args.only:
            ck.run(name, fn)
    failed = [n for n, r in ck.results.items() if r["ok"] is False]
    report = {
        "environment": environment(),
        "dry_run": ck.dry,
        "total_seconds": round(ck.elapsed(), 1),
        "failed": failed,
        "checks": ck.results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"gpu_check: {len(ck.results) - len(failed)} of {len(ck.results)} passed or skipped in "
        f"{ck.elapsed():.0f}s; wrote {args.out}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
