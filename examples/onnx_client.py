"""Predict with a resnetlab ONNX export using onnxruntime, Pillow and numpy only.

Everything the model needs is read from the file's own metadata (``resnetlab.preprocessing``:
the resize rule and size, interpolation, crop, channel order, mean/std, the input's dtype and
range, the calibration temperature, the class names, the task and thresholds), so this gives
the probabilities ``resnetlab predict`` gives, without resnetlab or torch installed:

    pip install onnxruntime pillow numpy
    python onnx_client.py runs/NAME/model.onnx photo.jpg other.png --topk 3
    python onnx_client.py runs/NAME/model.onnx photo.jpg --json   # as resnetlab predict --json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def read_metadata(session: ort.InferenceSession) -> dict:
    """The preprocessing and output description the export carries."""
    props = session.get_modelmeta().custom_metadata_map
    if "resnetlab.preprocessing" not in props:
        sys.exit("this ONNX file has no resnetlab.preprocessing metadata: export it again with "
                 "resnetlab export RUN --format onnx")
    meta = json.loads(props["resnetlab.preprocessing"])
    if meta.get("version") != 1:
        sys.exit(f"resnetlab.preprocessing version {meta.get('version')}: this client reads 1")
    return meta


def decode(path: str, color: str, background: int) -> Image.Image:
    """The file at full scale, turned by its EXIF orientation, alpha composited on
    ``background``, as RGB or L."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        if img.mode in ("LA", "La"):
            base = Image.new("L", img.size, background)
            base.paste(img.convert("L"), mask=img.getchannel("A"))
        else:
            rgba = img.convert("RGBA")
            base = Image.new("RGB", img.size, (background,) * 3)
            base.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        img = base
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return img if img.mode == color else img.convert(color)


def preprocess(img: Image.Image, meta: dict) -> np.ndarray:
    """One decoded image -> the model's float32 (C, H, W) input."""
    c, size, _ = meta["input_size"]
    w, h = img.size
    if meta["resize"] == "shorter_side":
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = meta["resize_size"], int(meta["resize_size"] * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:  # both_sides
        new_w = new_h = meta["resize_size"]
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), FILTERS[meta["interpolation"]])
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if meta["crop"] == "center":
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        a = a[top : top + size, left : left + size]
    x = a.astype(np.float32).transpose(2, 0, 1)  # (C, H, W), pixels 0..255
    mean = np.asarray(meta["mean"], np.float32).reshape(c, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(c, 1, 1)
    return (x * np.float32(meta["scale"]) - mean) / std


def probabilities(logits: np.ndarray, meta: dict) -> np.ndarray:
    z = logits.astype(np.float64)
    if meta["task"] == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    z = z / meta["temperature"]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(model: str, paths: list[str], topk: int = 5) -> list[dict]:
    """One row per file, as ``resnetlab predict --json``: path, topk, error."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = read_metadata(session)
    classes = meta["classes"]
    rows, batch, where = [], [], []
    for path in paths:
        try:
            img = decode(path, meta["color"], meta["alpha_background"])
        except (OSError, ValueError) as exc:
            rows.append({"path": path, "topk": [], "error": str(exc)})
            continue
        where.append(len(rows))
        rows.append({"path": path, "topk": [], "error": None})
        batch.append(preprocess(img, meta))
    if batch:
        logits = session.run(None, {meta["input_name"]: np.stack(batch)})[0]
        probs = probabilities(logits, meta)
        k = min(topk, len(classes))
        for row, p in zip(where, probs):
            order = np.argsort(-p, kind="stable")[:k]
            rows[row]["topk"] = [{"label": classes[i], "index": int(i), "prob": float(p[i])}
                                 for i in order]
            if meta["task"] == "multilabel":
                rows[row]["labels"] = [
                    {"label": classes[i], "index": i, "prob": float(p[i])}
                    for i in np.argsort(-p, kind="stable")
                    if p[i] >= meta["thresholds"][i]
                ]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model.onnx written by resnetlab export")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="rows as resnetlab predict --json")
    args = parser.parse_args(argv)
    rows = predict(args.model, args.images, args.topk)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for r in rows:
            tops = ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["topk"])
            print(f"{r['path']}: " + (f"ERROR {r['error']}" if r["error"] else tops))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
