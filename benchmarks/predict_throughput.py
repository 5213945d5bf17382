"""Prediction speed on the CPU at hand: the tutorial's predict script, every backend this
machine has, and what ``--backend auto`` chooses, for resnet18 and resnet50 at 224².

Reference (the tutorials): PIL + torchvision transforms (Resize 256, CenterCrop 224, ToTensor,
Normalize) and torchvision's model in eager fp32, batch 16, one image decoded after another.

Two measurements, each side by side with the reference in one run:
- model alone: images/s of each backend on a batch of 16 (``backend_choice.measure``: the
  same probe and agreement check that ``auto`` uses), beside torchvision's eager fp32;
- whole process: wall time of ``python -m resnetlab predict RUN PHOTOS`` (start-up, model
  load, ``auto``'s choice from its cache, decoding, inference, output) against the tutorial
  script's process, on 128 JPEGs of mixed sizes, alternating, median of ``--reps``.
Top-1 agreement of every side with the reference is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import make_jpeg_folder, write_result  # noqa: E402
from resnetlab import create_model
from resnetlab.artifacts.run import ModelMeta, RunDir  # noqa: E402
from resnetlab.artifacts.weights import IMAGENET_MEAN, IMAGENET_STD, save_bundle  # noqa: E402
from resnetlab.core.device import cpu_has_native_bf16  # noqa: E402
from resnetlab.inference import choice as backend_choice  # noqa: E402
from resnetlab.inference.loading import load_model  # noqa: E402

BATCH = 16
TUTORIAL = """
import json, sys, torch, torchvision
from pathlib import Path
from PIL import Image
from torchvision import transforms
from safetensors.torch import load_file
run, folder = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((run / "model.json").read_text())
model = getattr(torchvision.models, meta["model"])(num_classes=meta["num_classes"])
model.load_state_dict(load_file(run / "model.safetensors"))
model.eval()
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                         transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])])
paths = sorted(str(p) for p in folder.rglob("*.jpg"))
top1 = []
for i in range(0, len(paths), 16):
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + 16]])
    with torch.no_grad():
        top1 += model(x).argmax(1).tolist()
print(json.dumps(top1))
"""


def make_run(root: Path, name: str) -> Path:
    """Weights with ImageNet-like BatchNorm statistics and a confident head, as a run folder."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    meta = ModelMeta(
        model=name,
        num_classes=4,
        in_chans=3,
        classes=list("abcd"),
        input_size=[3, 224, 224],
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        preset="imagenet",
    )
    run = root / name
    save_bundle(model, meta, run)
    (run / RunDir.CONFIG).write_text(f"model: {name}\n")  # a run folder: auto may cache here
    return run


def model_alone(run: Path, seconds: float) -> list[dict]:
    loaded = load_model(run)
    pairs = [("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")]
    if cpu_has_native_bf16():
        pairs += [("torch", "bf16"), ("openvino-bf16", "bf16")]
    pairs = [p for p in pairs if p in backend_choice.candidates(torch.device("cpu"))]
    rows = backend_choice.measure(loaded, pairs, BATCH, seconds)
    # torchvision's own model, eager fp32 NCHW: the tutorials' model path
    import torchvision

    tv = getattr(torchvision.models, loaded.meta.model)(num_classes=4).eval()
    tv.load_state_dict(loaded.model.state_dict())
    x = torch.randn(BATCH, 3, 224, 224)
    with torch.inference_mode():
        tv(x)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            tv(x)
            times.append(time.perf_counter() - t0)
    rows.insert(
        0,
        {
            "backend": "torchvision eager (tutorial)",
            "precision": "fp32",
            "images_per_second": BATCH / statistics.median(times),
        },
    )
    return rows


def whole_process(run: Path, photos: Path, reps: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    script = run.parent / "tutorial_predict.py"
    script.write_text(TUTORIAL)
    sides = {
        "tutorial": [sys.executable, str(script), str(run), str(photos)],
        "resnetlab predict (auto)": [
            sys.executable,
            "-m",
            "resnetlab",
            "predict",
            str(run),
            str(photos),
            "--json",
            "--topk",
            "1",
        ],
    }
    # The first auto call measures and caches; a user's first call pays it once.
    first = time.perf_counter()
    subprocess.run(sides["resnetlab predict (auto)"], env=env, capture_output=True, check=True)
    measure_once = time.perf_counter() - first
    times: dict[str, list[float]] = {k: [] for k in sides}
    top1: dict[str, list[int]] = {}
    for _ in range(reps):
        for name, cmd in sides.items():
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            times[name].append(time.perf_counter() - t0)
            out = json.loads(p.stdout)
            top1[name] = out if name == "tutorial" else [r["topk"][0]["index"] for r in out]
    base = statistics.median(times["tutorial"])
    result = {"first_auto_call_seconds": measure_once}
    for name, t in times.items():
        agree = sum(a == b for a, b in zip(top1[name], top1["tutorial"])) / len(top1["tutorial"])
        result[name] = {
            "median_seconds": statistics.median(t),
            "samples": t,
            "speedup_vs_tutorial": base / statistics.median(t),
            "top1_agreement": agree,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--seconds", type=float, default=2.0, help="per backend, model alone")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-predict-bench-"))
    photos = make_jpeg_folder(
        tmp / "photos",
        classes=4,
        per_class=32,
        sizes=[(320, 240), (256, 256), (500, 375), (240, 320)],
    )
    out = {"images": len(list(photos.rglob("*.jpg"))), "batch": BATCH, "models": {}}
    for name in args.models:
        load_before = os.getloadavg()
        run = make_run(tmp / "runs", name)
        alone = model_alone(run, args.seconds)
        chosen = backend_choice.choose_backend(load_model(run), "cpu", batch_size=BATCH)
        fastest = max(
            (r for r in alone[1:] if r.get("agrees")), key=lambda r: r["images_per_second"]
        )
        pick = (chosen.backend, chosen.precision)
        mine = next(r for r in chosen.results if (r["backend"], r["precision"]) == pick)
        out["models"][name] = {
            # The machine is shared: its load around the measurement says how far to trust it.
            "load_average_before": load_before,
            "model_alone": alone,
            "auto_choice": f"{chosen.backend} {chosen.precision}",
            "auto_vs_fastest_model_alone": mine["images_per_second"] / fastest["images_per_second"],
            "whole_process": whole_process(run, photos, args.reps),
        }
        out["models"][name]["load_average_after"] = os.getloadavg()
        m = out["models"][name]
        print(
            f"== {name}: auto chose {m['auto_choice']} "
            f"({m['auto_vs_fastest_model_alone']:.2f}× the fastest measured); load average "
            f"{load_before[0]:.2f} before, {m['load_average_after'][0]:.2f} after"
        )
        for r in alone:
            speed = r.get("images_per_second")
            ok = "" if r.get("agrees", True) else "  (disagrees: never chosen)"
            print(f"  {r['backend']:30} {r['precision']:5} {speed or 0:8.1f} img/s{ok}")
        for side, r in m["whole_process"].items():
            if isinstance(r, dict):
                print(
                    f"  whole process {side:26} {r['median_seconds']:6.2f} s  "
                    f"×{r['speedup_vs_tutorial']:.2f}  top-1 agreement {r['top1_agreement']:.1%}"
                )
    write_result("predict_throughput", out)


if __name__ == "__main__":
    main()
