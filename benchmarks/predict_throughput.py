"""Prediction speed: `resnetlab predict` defaults vs the tutorial's predict script.

Reference: PIL + torchvision transforms (Resize 256, CenterCrop 224, ToTensor, Normalize) and
torchvision's resnet18 in eager fp32, batch 16, one image decoded after another, in a plain
Python process. Ours: what ``resnetlab predict`` runs by default (bf16 autocast where the CPU
has it, BatchNorm folded into the convolutions, channels_last, one stream per intra-op thread,
each decoding its own batch and running the model on it, the allocator setting of
``resnetlab.runtime``); ``ours_one_stream`` is the same with ``--streams 1`` (all threads on
one batch while 2 threads decode the next), to show what the streams are worth; and the
onnxruntime backends beside it: the fp32 export and the int8 one (``export --int8``,
calibrated on 64 training images). Each runs in its own process; the passes alternate. All use
the same weights (a resnet18 trained for one epoch on the benchmark's own images, so its
predictions are confident and top-1 agreement is meaningful).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).parent))
from common import Worker, alternate, make_jpeg_folder, serve_worker, write_result  # noqa: E402
from resnetlab.export import export  # noqa: E402
from resnetlab.predict import Predictor  # noqa: E402
from resnetlab.runtime import tune_allocator  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402
from resnetlab.weights import load_bundle_meta, read_state_dict  # noqa: E402

BATCH = 16


def reference_predict(paths, run: Path):
    meta = load_bundle_meta(run / "model.json")
    model = torchvision.models.resnet18(num_classes=meta["num_classes"])
    model.load_state_dict(read_state_dict(run / "model.safetensors"))
    model.eval()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                             transforms.ToTensor(),
                             transforms.Normalize(meta["mean"], meta["std"])])  # fmt: skip

    def run_all():
        top1 = []
        for i in range(0, len(paths), BATCH):
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i : i + BATCH]])
            with torch.no_grad():
                top1 += model(x).argmax(1).tolist()
        return len(paths), {"top1": top1}

    return run_all


def ours_predict(paths, run: Path, backend: str, streams: int | None = None):
    tune_allocator()  # as the `resnetlab` command does at start
    predictor = Predictor(run, backend=backend, streams=streams)  # otherwise the defaults
    streams_used = predictor.stream_count(-(-len(paths) // predictor.batch_size))

    def run_all():
        rows = predictor.predict_paths(paths, topk=1)
        top1 = [r["topk"][0]["index"] for r in rows]
        return len(paths), {"top1": top1, "batch_size": predictor.batch_size,
                            "precision": predictor.precision,
                            "streams": streams_used}  # fmt: skip

    return run_all


def worker(side: str, folder: Path, run: Path) -> None:
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    if side == "reference":
        serve_worker(reference_predict(paths, run))
    elif side == "ours_one_stream":
        serve_worker(ours_predict(paths, run, "torch", streams=1))
    else:
        backend = {"ours": "torch", "ours_onnx": "onnx", "ours_onnx_int8": "onnx-int8"}[side]
        serve_worker(ours_predict(paths, run, backend))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "FOLDER", "RUN"))
    args = parser.parse_args()
    if args.worker:
        side, folder, run = args.worker
        worker(side, Path(folder), Path(run))
        return
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-predict-bench-"))
    folder = make_jpeg_folder(tmp / "photos", classes=4, per_class=64,
                              sizes=[(320, 240), (256, 256), (500, 375), (240, 320)])  # fmt: skip
    images = len(list(folder.rglob("*.jpg")))
    cfg = resolve_config(dict(data=str(folder), model="resnet18", input_size=224, epochs=1,
                              batch_size=32, val_ratio=0.0, test_ratio=0.0, lr=0.01,
                              out=str(tmp / "runs"), name="r18"))  # fmt: skip
    Trainer(cfg, verbose=False).fit()
    run = tmp / "runs" / "r18"
    export(run, "onnx", int8=True)

    replies: dict[str, dict] = {}

    def keep(name: str, worker: Worker):
        def call():
            replies[name] = worker()
            return replies[name]

        return call

    sides = ("reference", "ours", "ours_one_stream", "ours_onnx", "ours_onnx_int8")
    workers = {side: Worker(__file__, side, str(folder), str(run)) for side in sides}
    try:
        results = alternate({side: keep(side, w) for side, w in workers.items()}, args.reps)
    finally:
        for w in workers.values():
            w.close()
    base = results["reference"]["median"]
    reference_top1 = np.array(replies["reference"]["top1"])
    for name in sides[1:]:
        results[name]["ratio_vs_reference"] = results[name]["median"] / base
        results[name]["top1_agreement"] = float(
            np.mean(np.array(replies[name]["top1"]) == reference_top1)
        )
    write_result("predict_throughput", {
        "images": images, "repetitions": args.reps, "reference_batch_size": BATCH,
        "ours_batch_size": replies["ours"]["batch_size"], "unit": "images/s",
        "ours_precision": replies["ours"]["precision"], "ours_streams": replies["ours"]["streams"],
        "results": results,
    })  # fmt: skip
    for name, r in results.items():
        extra = (f"  x{r['ratio_vs_reference']:.2f}, top-1 agreement {r['top1_agreement']:.1%}"
                 if "ratio_vs_reference" in r else "")  # fmt: skip
        print(f"{name:14} {r['median']:8.1f} img/s{extra}")


if __name__ == "__main__":
    main()
