"""Prediction speed: `resnetlab predict` defaults vs the tutorial's predict script.

Reference: PIL + torchvision transforms (Resize 256, CenterCrop 224, ToTensor, Normalize) and
torchvision's resnet18 in eager fp32, batch 16, one image decoded after another. Ours: the
Predictor's defaults (bf16 autocast where the CPU has it, channels_last, decoding the next
batch in 2 threads while the model runs), and the onnxruntime backend beside it. Both use
the same weights (a resnet18 trained for one epoch on the benchmark's own images, so its
predictions are confident and top-1 agreement is meaningful).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, make_jpeg_folder, write_result  # noqa: E402
from resnetlab.export import export  # noqa: E402
from resnetlab.predict import Predictor  # noqa: E402
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
        return top1

    return run_all


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-predict-bench-"))
    folder = make_jpeg_folder(tmp / "photos", classes=4, per_class=64,
                              sizes=[(320, 240), (256, 256), (500, 375), (240, 320)])  # fmt: skip
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    cfg = resolve_config(dict(data=str(folder), model="resnet18", input_size=224, epochs=1,
                              batch_size=32, val_ratio=0.0, test_ratio=0.0, lr=0.01,
                              out=str(tmp / "runs"), name="r18"))  # fmt: skip
    Trainer(cfg, verbose=False).fit()
    run = tmp / "runs" / "r18"
    export(run, "onnx")

    ref = reference_predict(paths, run)
    ours = Predictor(run)  # the defaults, batch size included
    onnx = Predictor(run, backend="onnx")
    preds = {}

    def timed(name, fn):
        def call():
            preds[name] = fn()
            return len(paths)

        return call

    def top1(p):
        return lambda: [r["topk"][0]["index"] for r in p.predict_paths(paths, topk=1)]

    results = alternate(
        {"reference": timed("reference", ref), "ours": timed("ours", top1(ours)),
         "ours_onnx": timed("ours_onnx", top1(onnx))},
        repetitions=3,
    )  # fmt: skip
    base = results["reference"]["median"]
    for name in ("ours", "ours_onnx"):
        results[name]["ratio_vs_reference"] = results[name]["median"] / base
        results[name]["top1_agreement"] = float(
            np.mean(np.array(preds[name]) == np.array(preds["reference"]))
        )
    write_result("predict_throughput", {
        "images": len(paths), "reference_batch_size": BATCH, "ours_batch_size": ours.batch_size,
        "unit": "images/s",
        "ours_precision": ours.precision, "results": results,
    })  # fmt: skip
    for name, r in results.items():
        extra = (f"  x{r['ratio_vs_reference']:.2f}, top-1 agreement {r['top1_agreement']:.1%}"
                 if "ratio_vs_reference" in r else "")  # fmt: skip
        print(f"{name:10} {r['median']:8.1f} img/s{extra}")


if __name__ == "__main__":
    main()
