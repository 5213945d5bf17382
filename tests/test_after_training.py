"""evaluate / predict / export / report on a run trained on a Unicode-named image folder."""

import csv
import io
import json
import os
import shutil
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_folder
from resnetlab import create_model
from resnetlab.analysis.evaluate import evaluate_run
from resnetlab.cli.commands import main
from resnetlab.core.errors import ExportError
from resnetlab.inference.export import onnx_session
from resnetlab.inference.loading import load_model
from resnetlab.inference.predict import Predictor
from resnetlab.train import Trainer, resolve_config

CLASSES = ["当归", "枸杞 子", "café"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("herbs")
    data = make_folder(root / "data", {c: 16 for c in CLASSES}, size=(40, 36))
    cfg = resolve_config(
        dict(
            data=str(data),
            model="resnet20",
            model_kwargs={"widths": [8, 16, 16]},
            input_size=32,
            epochs=6,
            batch_size=8,
            out=str(root / "runs"),
            name="herbs",
            num_workers=0,
            val_ratio=0.25,
            test_ratio=0.25,
            lr=0.05,
        )
    )
    Trainer(cfg, verbose=False).fit()
    return root / "runs" / "herbs", data


def test_evaluate_matches_direct_computation(run, capsys):
    run_dir, data = run
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "test" and r["classes"] == sorted(CLASSES)
    assert set(r) >= {"top1", "top5", "loss", "num_samples", "per_class", "confusion_matrix"}
    # Direct: the same test files through the Predictor, argmax against the folder name.
    from resnetlab.data import load_source

    source = load_source(str(data), val_ratio=0.25, test_ratio=0.25, seed=0)
    split = source.splits["test"]
    test_files = [str(p) for p in split.paths]
    pred = Predictor(run_dir, precision="fp32").predict_paths(test_files, topk=1)
    truth = [source.classes[i] for i in split.labels.tolist()]
    direct = np.mean([p["topk"][0]["label"] == t for p, t in zip(pred, truth)])
    assert r["num_samples"] == len(test_files) == 12
    ev32 = evaluate_run(str(run_dir), precision="fp32")
    assert ev32["top1"] == pytest.approx(direct)
    cm = np.array(ev32["confusion_matrix"])
    assert cm.sum() == 12 and np.trace(cm) == round(direct * 12)
    for i, name in enumerate(ev32["classes"]):
        m = ev32["per_class"][name]
        assert m["support"] == cm[i].sum()
        if cm[:, i].sum():
            assert m["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    assert (run_dir / "eval-test" / "confusion_matrix.png").is_file()


def test_evaluate_top_losses_and_tta(run, capsys, caplog):
    run_dir, data = run
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--data",
                str(data),
                "--split",
                "val",
                "--tta",
                "--top-losses",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "val split" in out and "(flip TTA)" in out and "top-1" in out
    assert (run_dir / "eval-val" / "top_losses.png").is_file()
    # Plots with CJK names log nothing (single-weight CJK fonts made matplotlib warn per label).
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")]


def _images(tmp_path, data):
    folder = tmp_path / "photos ü"
    folder.mkdir()
    files = []
    for c in CLASSES:
        src = next((data / c).glob("*.png"))
        dst = folder / f"{c} 照片.png"
        shutil.copy(src, dst)
        files.append(dst)
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return folder, files, bad, empty


def test_predict_rows_errors_and_exit_code(run, tmp_path, capsys):
    run_dir, data = run
    folder, files, bad, empty = _images(tmp_path, data)
    argv = [
        "predict",
        str(run_dir),
        str(files[0]),
        str(bad),
        str(files[1]),
        "--json",
        "--topk",
        "2",
    ]
    assert main(argv) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(files[0]), str(bad), str(files[1])]
    assert rows[1]["error"] and "not an image" in rows[1]["error"] and rows[1]["topk"] == []
    assert rows[0]["error"] is None and len(rows[0]["topk"]) == 2
    assert rows[0]["topk"][0]["label"] in CLASSES
    assert abs(sum(t["prob"] for t in rows[0]["topk"])) <= 1.0 + 1e-6
    # A folder is walked; CSV output round-trips the Unicode names.
    assert main(["predict", str(run_dir), str(folder), "--csv", "--topk", "1"]) == 1
    out = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    paths = {r["path"] for r in out}
    assert {str(f) for f in files} <= paths and str(empty) in paths
    assert any(r["error"].startswith("empty file") for r in out if r["path"] == str(empty))
    assert main(["predict", str(run_dir), str(files[2])]) == 0


def test_predict_same_probabilities_alone_and_batched(run, tmp_path):
    run_dir, data = run
    _, files, _, _ = _images(tmp_path, data)
    p = Predictor(run_dir, precision="fp32", batch_size=8)
    batched = p.predict_paths([str(f) for f in files] * 3, topk=3)
    alone = [p.predict_paths([str(f)], topk=3)[0] for f in files]
    for a, b in zip(alone, batched[:3]):
        for x, y in zip(a["topk"], b["topk"]):
            assert x["label"] == y["label"] and abs(x["prob"] - y["prob"]) < 1e-5


def test_predict_streams_match_one_stream(run, tmp_path, capsys):
    run_dir, data = run
    _, files, bad, _ = _images(tmp_path, data)
    paths = [str(f) for f in files] * 4 + [str(bad), str(files[0])]  # 14, one unreadable
    one = Predictor(run_dir, precision="fp32", batch_size=4, streams=1)
    two = Predictor(run_dir, precision="fp32", batch_size=4, streams=2)
    sizes: list[int] = []
    rows = two._rows
    two._rows = lambda chunk, *rest: sizes.append(len(chunk)) or rows(chunk, *rest)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that a stream's count (1) differs from the caller's
    try:
        a, b = one.predict_paths(paths, topk=3), two.predict_paths(paths, topk=3)
        assert torch.get_num_threads() == 2
        later: list[int] = []  # a thread started afterwards gets the caller's count too
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [2]
    finally:
        torch.set_num_threads(threads)
    assert [r["path"] for r in b] == paths
    assert "not an image" in b[12]["error"] and b[12]["topk"] == []
    for x, y in zip(a, b):
        assert x["error"] == y["error"] and [t["label"] for t in x["topk"]] == [
            t["label"] for t in y["topk"]
        ]
        assert all(abs(s["prob"] - t["prob"]) < 1e-5 for s, t in zip(x["topk"], y["topk"]))
    # 14 files in batches of at most 4: four batches (a multiple of the 2 streams), even sizes.
    assert sorted(sizes) == [3, 3, 4, 4]
    assert two.stream_count(1) == 1 and Predictor(run_dir, streams=3).stream_count(2) == 2
    assert main(["predict", str(run_dir), str(files[0]), "--streams", "0"]) == 2
    assert "--streams must be at least 1" in capsys.readouterr().err


def test_predict_streams_stop_on_an_error(run, tmp_path):
    """An unexpected error in one stream (or Ctrl-C in the caller) ends the others after the
    batch they are on, instead of predicting every remaining file first."""
    run_dir, data = run
    _, files, _, _ = _images(tmp_path, data)
    paths = [str(files[0])] * 40
    p = Predictor(run_dir, precision="fp32", batch_size=1, streams=2)
    calls = []
    decode = p._decode

    def failing(path):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk went away")
        return decode(path)

    p._decode = failing
    with pytest.raises(RuntimeError, match="disk went away"):
        p.predict_paths(paths, topk=1)
    assert len(calls) < 10


def test_predict_without_run_uses_imagenet_names(tmp_path, capsys):
    weights = tmp_path / "r18.pth"
    torch.save(create_model("resnet18").state_dict(), weights)
    img = tmp_path / "dog.jpg"
    Image.new("RGB", (300, 240), (120, 90, 60)).save(img)
    assert (
        main(
            [
                "predict",
                "--model",
                "resnet18",
                "--weights",
                str(weights),
                str(img),
                "--json",
                "--topk",
                "5",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    import torchvision

    names = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert len(rows[0]["topk"]) == 5 and all(t["label"] in names for t in rows[0]["topk"])
    assert rows[0]["topk"][0]["label"] == names[rows[0]["topk"][0]["index"]]


def _onnx_metadata(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_onnx_verified_with_metadata(run, capsys):
    run_dir, data = run
    assert main(["export", str(run_dir), "--format", "onnx", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verified real images" in out and "verified random batch 5" in out
    props = _onnx_metadata(run_dir / "model.onnx")
    assert json.loads(props["resnetlab.classes"]) == sorted(CLASSES)
    assert json.loads(props["resnetlab.input_size"]) == [3, 32, 32]
    session = onnx_session(run_dir / "model.onnx")
    out3 = session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out3.shape == (3, 3)  # dynamic batch axis
    # The onnx backend agrees with torch fp32.
    files = [str(p) for p in sorted(data.rglob("*.png"))[:6]]
    a = Predictor(run_dir, precision="fp32").predict_paths(files, topk=3)
    b = Predictor(run_dir, backend="onnx").predict_paths(files, topk=3)
    for x, y in zip(a, b):
        assert [t["index"] for t in x["topk"]] == [t["index"] for t in y["topk"]]
        assert all(abs(s["prob"] - t["prob"]) < 1e-4 for s, t in zip(x["topk"], y["topk"]))


def test_export_torchscript(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "m.ts"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(["export", str(run_dir), "--format", "torchscript", "--out", str(out), "--verify"])
            == 0
        )
    # PyTorch's TorchScript deprecation notice is the README's to give, not every export's.
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    assert "verified" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(out))
    assert scripted(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_export_replaces_only_its_own_files(run, tmp_path, capsys):
    """An earlier export is rebuilt in place; weights, checkpoints or anyone else's file at the
    output path are refused and left byte for byte as they were."""
    run_dir, _ = run
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts")):
        out = tmp_path / name
        for _ in range(2):  # the second run replaces the first export
            assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    weights = (run_dir / "model.safetensors").read_bytes()
    other = tmp_path / "theirs.onnx"
    other.write_bytes(b"somebody else's model")
    for target, fmt in (
        (run_dir / "model.safetensors", "onnx"),
        (other, "onnx"),
        (run_dir / "checkpoint-last.pt", "torchscript"),
    ):
        before = target.read_bytes()
        capsys.readouterr()
        assert main(["export", str(run_dir), "--format", fmt, "--out", str(target)]) == 2
        assert "not a resnetlab export; it is left as it is" in capsys.readouterr().err
        assert target.read_bytes() == before
    assert (run_dir / "model.safetensors").read_bytes() == weights
    assert not list(tmp_path.glob(".*.tmp"))


def test_onnx_external_data_outside_folder_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 16)
    inner = tmp_path / "model"
    inner.mkdir()
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    node = helper.make_node("Identity", ["w"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", 1, [4])], [t])
    onnx.save(helper.make_model(graph), str(inner / "m.onnx"))
    with pytest.raises(ExportError, match="outside"):
        onnx_session(inner / "m.onnx")


def test_load_model_from_every_form(run):
    run_dir, _ = run
    for path in (run_dir, run_dir / "model.safetensors", run_dir / "checkpoint-best.pt"):
        loaded = load_model(path)
        assert loaded.classes == sorted(CLASSES)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_chromium(run, tmp_path):
    run_dir, _ = run
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for section in (
        "Learning curves",
        "Confusion matrix",
        "Per-class metrics",
        "Top losses",
        "Model",
        "Configuration",
        "Environment",
        "枸杞 子",
    ):
        assert section in page
    assert "http://" not in page and "https://" not in page  # self-contained, works offline
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from browser import chrome_driver

    shot = tmp_path / "report.png"
    with chrome_driver() as driver:
        driver.get((run_dir / "report.html").as_uri())
        headings = [h.text for h in driver.find_elements("css selector", "h2")]
        assert headings[:4] == [
            "Overview",
            "Learning curves",
            "Confusion matrix",
            "Per-class metrics",
        ]
        images = driver.find_elements("css selector", "img")
        assert len(images) >= 3
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_evaluate_uses_the_runs_bad_file_tolerance(tmp_path):
    data = make_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(36, 36))
    (data / "a" / "broken.png").write_bytes(b"")
    settings = dict(data=str(data), model_kwargs={"widths": [4, 8, 8]}, epochs=1, batch_size=8)
    settings.update(input_size=32, max_bad_fraction=0.1, num_workers=0, val_ratio=0.2)
    cfg = resolve_config(dict(settings, test_ratio=0.2, out=str(tmp_path), name="r"))
    Trainer(cfg, verbose=False).fit()
    assert evaluate_run(str(tmp_path / "r"), backend="torch")["num_samples"] == 4
    from resnetlab.data import DataError

    with pytest.raises(DataError, match="max-bad-fraction"):
        evaluate_run(str(tmp_path / "r"), max_bad_fraction=0.0)


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "resnet20"])
def test_fold_batchnorm_keeps_outputs(name):
    from resnetlab.inference.backends import fold_batchnorm

    model = create_model(name).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_export_verify_failure_is_a_clear_error(run, tmp_path, capsys, monkeypatch):
    import resnetlab.inference.export

    monkeypatch.setattr(resnetlab.inference.export, "TOLERANCE", 0.0)
    run_dir, _ = run
    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--verify"]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err


def test_export_int8_measures_accuracy_and_predicts(run, tmp_path, capsys, monkeypatch):
    import onnx

    import resnetlab.inference.export

    src, data = run
    run_dir = tmp_path / "herbs"
    shutil.copytree(src, run_dir)
    (run_dir / "model.onnx").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="--int8"):
        Predictor(run_dir, backend="onnx-int8")
    assert main(["export", str(run_dir), "--int8", "--calibration", "16"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 16 train images" in out and "int8 on test (12 images)" in out
    model = onnx.load(str(run_dir / "model.int8.onnx"))
    props = _onnx_metadata(run_dir / "model.int8.onnx")
    assert json.loads(props["resnetlab.classes"]) == sorted(CLASSES)
    assert json.loads(props["resnetlab.quantization"])["calibration_images"] == 16
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 19  # every convolution's weights (and the classifier's)
    # The fp32 figure it reports is the model's test accuracy, computed another way.
    r = resnetlab.inference.export.quantize_int8(
        run_dir, run_dir / "model.onnx", tmp_path / "q.onnx", 16
    )
    assert r["fp32_top1"] == pytest.approx(evaluate_run(str(run_dir), precision="fp32")["top1"])
    assert r["delta_points"] == pytest.approx(100 * (r["int8_top1"] - r["fp32_top1"]))
    # predict / serve use it through the onnx-int8 backend.
    files = [str(p) for p in sorted(data.rglob("*.png"))[:8]]
    q = Predictor(run_dir, backend="onnx-int8")
    assert q.precision == "int8"
    rows = q.predict_paths(files, topk=3)
    assert all(len(r["topk"]) == 3 and r["error"] is None for r in rows)
    assert all(abs(sum(t["prob"] for t in r["topk"]) - 1) < 1e-3 for r in rows)  # 3 classes
    # --verify holds the int8 model to a top-1 agreement bound; a failure is a clear error,
    # and the int8 file exported earlier stays as it was.
    before = (run_dir / "model.int8.onnx").read_bytes()
    monkeypatch.setattr(resnetlab.inference.export, "INT8_MIN_AGREEMENT", 1.01)
    assert main(["export", str(run_dir), "--int8", "--verify"]) == 2
    err = capsys.readouterr().err
    assert "model.int8.onnx not written: int8 top-1 agrees with fp32 on only" in err
    assert "model.onnx (fp32) is written and verified" in err
    assert (run_dir / "model.int8.onnx").read_bytes() == before
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert main(["export", str(run_dir), "--format", "torchscript", "--int8"]) == 2
    assert "--int8 needs --format onnx" in capsys.readouterr().err
    # A bare model file has no data to calibrate on: a clear error before anything is written.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(run_dir / name, bare / name)
    assert main(["export", str(bare / "model.safetensors"), "--int8"]) == 2
    assert "give --data" in capsys.readouterr().err
    assert sorted(p.name for p in bare.iterdir()) == ["model.json", "model.safetensors"]


def test_predict_topk_above_the_classes_gives_all_and_below_one_is_an_error(run, tmp_path, capsys):
    run_dir, data = run
    _, files, _, _ = _images(tmp_path, data)
    p = Predictor(run_dir, precision="fp32")
    rows = p.predict_paths([str(files[0])], topk=10)
    assert sorted(t["label"] for t in rows[0]["topk"]) == sorted(CLASSES)
    assert len(p.predict_images([Image.open(files[0])], topk=10)[0]) == 3
    for k in (0, -3):
        with pytest.raises(ValueError, match=f"topk must be .* at least 1, got {k}; give"):
            p.predict_paths([str(files[0])], topk=k)
        with pytest.raises(ValueError, match=f"topk must be .* at least 1, got {k}; give"):
            p.predict_images([Image.open(files[0])], topk=k)
        assert main(["predict", str(run_dir), str(files[0]), "--topk", str(k)]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(
                f"resnetlab predict: error: topk must be a whole number of at least 1, got {k}"
            )
            and err.count("\n") == 1
        )
    assert main(["predict", str(run_dir), str(files[0]), "--topk", "7", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["topk"]) == 3


def test_predict_glob_that_matches_nothing_gets_an_error_row(run, tmp_path, capsys):
    run_dir, data = run
    folder, files, _, _ = _images(tmp_path, data)
    pattern = str(tmp_path / "holiday-*.jpg")
    matching = str(folder / "café*.png")  # a glob that matches is still expanded
    assert main(["predict", str(run_dir), str(files[0]), pattern, matching, "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(files[0]), pattern, str(files[2])]
    assert rows[1] == {"path": pattern, "topk": [], "error": "no file matches this pattern"}
    assert rows[0]["error"] is None and rows[2]["error"] is None and rows[2]["topk"]
    # A missing plain file still says that it cannot be read.
    missing = str(tmp_path / "gone.png")
    assert main(["predict", str(run_dir), missing, "--json"]) == 1
    assert "cannot read" in json.loads(capsys.readouterr().out)[0]["error"]
