"""One way in for pixels, and exports any client can use.

A run trained on JPEG photos (one of them turned by its EXIF orientation) answers the same
probabilities, within 1e-6, whichever door an image comes in by: ``Run.predict`` with a path,
bytes, a PIL image or an array, ``resnetlab predict``, ``serve``, and the evaluation inputs of
``evaluate`` and of training (those equal predict's byte for byte); Grad-CAM (``Run.explain``,
``resnetlab explain``, ``serve``'s ``/explain``) explains that class with that probability.
Its ONNX and TorchScript exports load back as models; ``examples/onnx_client.py``
(onnxruntime, Pillow and numpy, and nothing but the export's metadata) reproduces ``resnetlab
predict`` within 1e-5 for the small, imagenet and hub-bicubic presets; timm reads each run's
own preprocessing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import resnetlab
from resnetlab.cli.commands import main
from resnetlab.core.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLASSES = ("红triangle", "square", "circle")


def _photo(kind: int, rng, size=(160, 120)) -> Image.Image:
    """A shape on a noisy background, big enough that a draft decode would shrink it."""
    w, h = size
    a = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    d = ImageDraw.Draw(img)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    color = ((220, 40, 40), (40, 200, 60), (40, 70, 220))[kind]
    if kind == 0:
        d.polygon([(w // 2, h // 5), (w // 5, 4 * h // 5), (4 * w // 5, 4 * h // 5)], fill=color)
    elif kind == 1:
        d.rectangle(box, fill=color)
    else:
        d.ellipse(box, fill=color)
    return img


def _exif_turned(img: Image.Image, path: Path) -> None:
    """Saved turned a quarter, with the EXIF orientation (6) that turns it back up."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(path, quality=92, exif=exif)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "shapes"
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(8):
            size = (160, 120) if i % 2 else (120, 150)
            img = _photo(k, rng, size)
            if i == 3:
                _exif_turned(img, root / name / f"{i}.jpg")
            else:
                img.save(root / name / f"{i}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def photos_run(photos, tmp_path_factory) -> Path:
    """A resnet20 (widths 4-8-8) on the photos with the ImageNet preset at 32 px (resize the
    shorter side to 36, crop 32), one epoch."""
    out = tmp_path_factory.mktemp("runs")
    resnetlab.fit(
        data=photos,
        model="resnet20",
        verbose=False,
        model_kwargs={"widths": [4, 8, 8]},
        epochs=1,
        batch_size=8,
        preset="imagenet",
        input_size=32,
        num_workers=0,
        precise_bn=False,
        val_ratio=0.25,
        test_ratio=0.25,
        out=str(out),
        name="shapes",
    )
    return out / "shapes"


def _probs_of_rows(rows: list[dict], classes: list[str]) -> np.ndarray:
    """(N, C) from predict --json rows holding every class."""
    out = np.zeros((len(rows), len(classes)))
    for i, r in enumerate(rows):
        assert r["error"] is None, r
        for t in r["topk"]:
            out[i, t["index"]] = t["prob"]
    return out


def _files(photos: Path) -> list[str]:
    turned = [str(photos / name / "3.jpg") for name in CLASSES]
    return [*turned, str(photos / CLASSES[1] / "4.jpg"), str(photos / CLASSES[2] / "5.jpg")]


def test_the_same_jpeg_gets_the_same_probabilities_through_every_door(
    photos, photos_run, capsys, tmp_path
):
    from resnetlab.data.images import open_image

    run = resnetlab.load(photos_run)
    files = _files(photos)
    ref = run.predict(files).probs
    assert ref.shape == (len(files), 3) and np.allclose(ref.sum(1), 1, atol=1e-5)
    doors = {
        "bytes": run.predict([Path(f).read_bytes() for f in files]).probs,
        "PIL image (EXIF orientation applied)": run.predict([Image.open(f) for f in files]).probs,
        "array of the upright image": run.predict([np.asarray(open_image(f)) for f in files]).probs,
        "one at a time": np.concatenate([run.predict(f).probs for f in files]),
    }
    capsys.readouterr()
    argv = [
        "predict",
        str(photos_run),
        *files,
        "--json",
        "--topk",
        "3",
        "--backend",
        "torch",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    doors["resnetlab predict"] = _probs_of_rows(json.loads(capsys.readouterr().out), run.classes)

    from fastapi.testclient import TestClient

    from resnetlab.inference.predict import Predictor
    from resnetlab.serve.app import create_app

    app = create_app(Predictor(photos_run, backend="torch", precision="fp32"))
    with TestClient(app) as client:
        rows = []
        for f in files:
            r = client.post(
                "/predict?topk=3", files={"file": ("x.jpg", Path(f).read_bytes(), "image/jpeg")}
            )
            assert r.status_code == 200, r.text
            rows.append({**r.json(), "error": None})
        explained = []
        for f in files:
            r = client.post(
                "/explain", files={"file": ("x.jpg", Path(f).read_bytes(), "image/jpeg")}
            )
            assert r.status_code == 200, r.text
            # X-Prob has six decimals: half of the last one on top of the tolerance
            explained.append((int(r.headers["X-Class-Index"]), float(r.headers["X-Prob"]), 5e-7))
    doors["serve"] = _probs_of_rows(rows, run.classes)
    for door, probs in doors.items():
        assert np.abs(probs - ref).max() <= 1e-6, door

    # Grad-CAM explains each image's top class with predict's probability, by every door
    def found(es) -> list[tuple[int, float, float]]:  # (class index, probability, slack)
        return [(e.index, e.prob, 0.0) for e in es]

    explains = {
        "serve /explain": explained,
        "Run.explain with paths": found(run.explain(files)),
        "Run.explain with bytes": found(run.explain([Path(f).read_bytes() for f in files])),
        "Run.explain with PIL images": found(run.explain([Image.open(f) for f in files])),
        "Run.explain with arrays": found(run.explain([np.asarray(open_image(f)) for f in files])),
    }
    argv = ["explain", str(photos_run), *files, "--json", "--out", str(tmp_path / "cam")]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    explains["resnetlab explain"] = [(r["index"], r["prob"], 0.0) for r in rows]
    top = ref.argmax(1).tolist()
    for door, got in explains.items():
        assert [i for i, _, _ in got] == top, door
        for k, (i, prob, slack) in enumerate(got):
            assert abs(prob - ref[k, i]) <= 1e-6 + slack, (door, k, prob, ref[k, i])
    # a class named: its own probability, not the top one's
    least = int(ref[0].argmin())
    e = run.explain(files[0], class_name=run.classes[least])[0]
    assert e.index == least and abs(e.prob - ref[0, least]) <= 1e-6


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_evaluate_and_training_feed_the_model_what_predict_feeds_it(photos_run, cache):
    """The held-out images as evaluate and the validation of training prepare them (cached
    in memory or decoded per file) are predict's inputs, byte for byte."""
    from dataclasses import replace

    from resnetlab.data import build_pipeline
    from resnetlab.data.images import open_image
    from resnetlab.data.transforms import stack_images
    from resnetlab.inference.loading import load_model, run_pipeline
    from resnetlab.inference.predict import Predictor
    from resnetlab.train.config import TrainConfig

    p = Predictor(photos_run, backend="torch", precision="fp32")
    evaluate_pipe = run_pipeline(load_model(photos_run), num_workers=0)
    evaluate_pipe.cfg.cache = cache
    cfg = TrainConfig(**load_model(photos_run).run.read_config())
    training_pipe = build_pipeline(replace(cfg.data_config(), cache=cache), seed=cfg.seed)
    assert training_pipe.mean == p.meta.mean and training_pipe.input_size == p.input_size
    for name, pipe in (("evaluate", evaluate_pipe), ("training", training_pipe)):
        for split in ("val", "test"):
            paths = [str(x) for x in pipe.source.splits[split].paths]
            loader, tf = pipe.split_loader(split, channels_last=False)
            got = torch.cat([tf(x) for x, _ in loader])
            want = p._batch_tf(stack_images([p.preprocess(open_image(f)) for f in paths]))
            assert torch.equal(got, want.contiguous()), (name, split, cache)


@pytest.fixture(scope="module")
def exported(photos_run, tmp_path_factory) -> Path:
    """A copy of the photos run with its ONNX and TorchScript exports."""
    run_dir = tmp_path_factory.mktemp("exported") / "shapes"
    shutil.copytree(photos_run, run_dir)
    run = resnetlab.load(run_dir)
    paths = run.export("onnx", verify=False), run.export("torchscript", verify=False)
    assert paths == (run_dir / "model.onnx", run_dir / "model.ts")
    return run_dir


def test_a_run_loads_from_its_onnx_and_torchscript_exports(photos, exported, capsys):
    run = resnetlab.load(exported)
    onnx_path, ts_path = exported / "model.onnx", exported / "model.ts"
    files = _files(photos)
    ref = run.predict(files).probs
    for path in (onnx_path, ts_path):
        exported = resnetlab.load(path)
        assert exported.classes == run.classes and exported.meta.to_json() == run.meta.to_json()
        assert np.abs(exported.predict(files).probs - ref).max() <= 1e-5, path
        capsys.readouterr()
        argv = ["predict", str(path), *files, "--json", "--topk", "3", "--precision", "fp32"]
        assert main(argv) == 0, path
        rows = json.loads(capsys.readouterr().out)
        assert np.abs(_probs_of_rows(rows, run.classes) - ref).max() <= 1e-5, path
    with pytest.raises(ConfigError, match="needs the weights"):
        resnetlab.load(onnx_path).explain(files[0])


def _client(model: Path, files: list[str]) -> list[dict]:
    """examples/onnx_client.py in a fresh interpreter where torch, torchvision and resnetlab
    cannot be imported: it has onnxruntime, Pillow and numpy only."""
    code = (
        "import runpy, sys\n"
        "for m in ('torch', 'torchvision', 'resnetlab', 'timm'):\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['onnx_client.py', {str(model)!r}, *{files!r}, '--json', '--topk', '99']\n"
        f"runpy.run_path({str(EXAMPLES / 'onnx_client.py')!r}, run_name='__main__')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _digit_files(folder: Path) -> list[str]:
    from sklearn.datasets import load_digits

    folder.mkdir()
    d = load_digits()
    out = []
    for i in range(6):
        img = Image.fromarray(np.rint(d.images[i] * 255 / 16).astype(np.uint8), "L")
        img.save(folder / f"{i}.png")
        out.append(str(folder / f"{i}.png"))
    rgba = Image.fromarray(np.rint(d.images[7] * 255 / 16).astype(np.uint8), "L").convert("RGBA")
    rgba.putalpha(200)  # alpha composited on white, by both
    rgba.save(folder / "alpha.png")
    return [*out, str(folder / "alpha.png")]


@pytest.mark.parametrize("preset", ["small", "imagenet", "hub-bicubic"])
def test_the_onnx_client_reproduces_resnetlab_predict(
    preset, trained_run, photos, exported, tmp_path, capsys
):
    if preset == "imagenet":
        run_dir = exported
    else:
        run_dir = tmp_path / "run"
        source = trained_run if preset == "small" else exported
        shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("model.onnx", "model.ts"))
    if preset == "hub-bicubic":  # as a run fine-tuned from timm hub weights records it
        meta = json.loads((run_dir / "model.json").read_text())
        meta.update(interpolation="bicubic", resize_size=40)
        (run_dir / "model.json").write_text(json.dumps(meta))
    files = _digit_files(tmp_path / "digits") if preset == "small" else _files(photos)
    if preset != "imagenet":
        assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    capsys.readouterr()
    argv = [
        "predict",
        str(run_dir),
        *files,
        "--json",
        "--topk",
        "99",
        "--backend",
        "torch",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    classes = resnetlab.load(run_dir).classes
    want = _probs_of_rows(rows, classes)
    got = _probs_of_rows(_client(run_dir / "model.onnx", files), classes)
    assert np.abs(got - want).max() <= 1e-5, preset
    meta = resnetlab.load(run_dir / "model.onnx").meta
    assert meta.interpolation == ("bicubic" if preset == "hub-bicubic" else None)


def test_the_onnx_metadata_holds_the_whole_preprocessing(exported):
    import zipfile

    import onnx

    run_dir = exported
    props = {p.key: p.value for p in onnx.load(str(run_dir / "model.onnx")).metadata_props}
    pre = json.loads(props["resnetlab.preprocessing"])
    meta = json.loads((run_dir / "model.json").read_text())
    assert pre["resize"] == "shorter_side" and pre["resize_size"] == 36
    assert pre["crop"] == "center" and pre["input_size"] == [3, 32, 32]
    assert pre["interpolation"] == "bilinear" and pre["color"] == "RGB"
    assert pre["mean"] == meta["mean"] and pre["std"] == meta["std"]
    assert pre["dtype"] == "float32" and pre["pixel_range"] == [0, 255] and pre["layout"] == "NCHW"
    assert pre["temperature"] == (meta.get("temperature") or 1.0)
    assert pre["classes"] == meta["classes"]
    assert pre["task"] == "multiclass" and "thresholds" not in pre
    with zipfile.ZipFile(run_dir / "model.ts") as z:
        name = next(n for n in z.namelist() if n.endswith("extra/preprocessing.json"))
        assert json.loads(z.read(name)) == pre


def test_timm_reads_the_run_s_own_preprocessing(photos, photos_run, trained_run):
    import timm.data

    from resnetlab.data.images import open_image

    run = resnetlab.load(photos_run)
    cfg = timm.data.resolve_model_data_config(run.model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == tuple(run.meta.mean) and cfg["std"] == tuple(run.meta.std)
    assert cfg["crop_mode"] == "center" and int(32 / cfg["crop_pct"]) == 36
    # timm's own evaluation transform on a PIL image gives the run's input
    timm_input = timm.data.create_transform(**cfg)(open_image(_files(photos)[0]))
    p = run._predictor("torch", None, "fp32", 8)
    ours = p._batch_tf(p.preprocess(open_image(_files(photos)[0]))[None])[0]
    assert torch.allclose(timm_input, ours, atol=1e-5)
    digits = resnetlab.load(trained_run)
    small = timm.data.resolve_model_data_config(digits.model)
    assert small["input_size"] == (1, 32, 32) and small["crop_mode"] == "squash"
    assert small["crop_pct"] == 1.0 and small["mean"] == tuple(digits.meta.mean)
    fresh = timm.data.resolve_model_data_config(resnetlab.create_model("resnet50"))
    assert fresh["input_size"] == (3, 224, 224) and fresh["crop_pct"] == 0.875
    assert fresh["interpolation"] == "bilinear" and fresh["crop_mode"] == "center"
