"""--backend auto: measured once per machine and model, cached in the run folder, re-measured
when the CPU, the versions or the weights change; a backend that disagrees is never chosen."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from datagen import make_folder
from resnetlab import create_model
from resnetlab.artifacts.run import ModelMeta, RunDir
from resnetlab.artifacts.weights import save_bundle
from resnetlab.cli.commands import main
from resnetlab.inference import choice as backend_choice
from resnetlab.inference.backends import BACKENDS, TorchBackend, register_backend
from resnetlab.inference.export import export_onnx
from resnetlab.inference.loading import load_model, pretrained_model
from resnetlab.inference.predict import Predictor

SPEED = {"torch": 100.0, "onnx": 150.0, "openvino": 140.0, "openvino-bf16": 400.0, "wrong": 1000.0}


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A tiny run folder with the ONNX file the onnx and OpenVINO backends run, exported once
    for the module: each measurement here would otherwise export it first (seconds), which is
    not what these tests check (--backend auto exporting on first use: test_read_only_run and
    the journeys)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, widths=[4, 8, 8]).eval()
    meta = ModelMeta(
        model="resnet20",
        num_classes=3,
        in_chans=3,
        classes=["a", "b", "c"],
        input_size=[3, 32, 32],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        model_kwargs={"widths": [4, 8, 8]},
    )
    path = tmp_path_factory.mktemp("exported") / "run"
    save_bundle(model, meta, path)
    export_onnx(load_model(path), RunDir(path).onnx)
    return path


@pytest.fixture
def run(exported_run, tmp_path):
    """The exported run, copied: the test's own backend.json and caches go into it."""
    return Path(shutil.copytree(exported_run, tmp_path / "run"))


@pytest.fixture
def timed(monkeypatch):
    """Deterministic speeds instead of the clock; counts the measurements."""
    calls = []

    def fake(runs, seconds):
        calls.extend(backend.name for backend, _ in runs)
        return [SPEED[b.name] * (2 if b.precision == "bf16" else 1) for b, _ in runs]

    monkeypatch.setattr(backend_choice, "_images_per_second", fake)
    return calls


def test_the_choice_is_cached_and_reused(run, timed):
    first = backend_choice.choose_backend(load_model(run), "cpu")
    assert (first.backend, first.precision) != ("torch", "fp32")
    assert "measured now" in first.note and timed
    cache = json.loads((run / RunDir.BACKEND_CHOICE).read_text())
    assert len(cache) == 1
    timed.clear()
    again = backend_choice.choose_backend(load_model(run), "cpu")
    assert (again.backend, again.precision) == (first.backend, first.precision)
    assert timed == [] and "measured once, cached" in again.note


def test_another_cpu_versions_or_weights_are_measured_again(run, timed, monkeypatch):
    backend_choice.choose_backend(load_model(run), "cpu")
    n = len(timed)
    monkeypatch.setattr(backend_choice, "cpu_model", lambda: "Another CPU")
    backend_choice.choose_backend(load_model(run), "cpu")
    assert len(timed) == 2 * n
    monkeypatch.setattr(backend_choice, "_version", lambda p: "99.0")
    backend_choice.choose_backend(load_model(run), "cpu")
    assert len(timed) == 3 * n
    loaded = load_model(run)  # the weights change (a resumed run rewrote them)
    with torch.no_grad():
        loaded.model.fc.weight.add_(1.0)
    save_bundle(loaded.model, loaded.meta, run)
    backend_choice.choose_backend(load_model(run), "cpu")
    assert len(timed) == 4 * n


def test_a_backend_that_disagrees_is_never_chosen(run, timed, monkeypatch):
    @register_backend
    class Wrong(TorchBackend):  # the fastest, and wrong
        name = "wrong"

        def logits(self, batch):
            return super().logits(batch) + torch.linspace(0, 1, 3)

    try:
        monkeypatch.setattr(
            backend_choice, "CANDIDATES", (*backend_choice.CANDIDATES, ("wrong", "fp32"))
        )
        choice = backend_choice.choose_backend(load_model(run), "cpu")
        assert "wrong" in timed or any(r["backend"] == "wrong" for r in choice.results)
        assert choice.backend != "wrong"
        row = next(r for r in choice.results if r["backend"] == "wrong")
        assert row["agrees"] is False
    finally:
        BACKENDS.pop("wrong")


def test_a_missing_optional_runtime_is_skipped(run, timed, monkeypatch):
    real = backend_choice._version
    missing = ("openvino", "onnxruntime")
    monkeypatch.setattr(backend_choice, "_version", lambda p: None if p in missing else real(p))
    choice = backend_choice.choose_backend(load_model(run), "cpu")
    assert {r["backend"] for r in choice.results} <= {"torch"}
    assert choice.backend == "torch"


def test_backend_torch_is_forced_and_measures_nothing(run, timed):
    p = Predictor(run, backend="torch")
    assert p.backend.name == "torch" and p.choice is None and timed == []
    assert not (run / RunDir.BACKEND_CHOICE).exists()


def test_predict_says_which_backend_runs(run, timed, tmp_path, capsys):
    images = make_folder(tmp_path / "imgs", {"x": 3}, size=(32, 32))
    assert main(["predict", str(run), str(images), "--json"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("backend ")]
    assert len(lines) == 1 and "× torch fp32 here" in lines[0]


def test_without_a_run_folder_torch_runs(tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file(create_model("resnet18", num_classes=1000).state_dict(), weights)
    choice = backend_choice.choose_backend(pretrained_model("resnet18", str(weights)), "cpu")
    assert choice.backend == "torch" and "no run folder" in choice.note


@pytest.mark.parametrize(
    ("flags", "bf16"),
    [
        ("fpu sse4_2 avx avx2 fma f16c", False),  # Zen 3, Intel Core laptops: AVX2 only
        ("fpu avx2 fma avx512f avx512_vnni", False),  # AVX-512 without its bf16 extension
        ("fpu avx2 avx512f avx512_bf16", True),  # Zen 4 and later, Cooper Lake
        ("fpu avx2 avx512f amx_bf16 amx_tile", True),
    ],  # Sapphire Rapids and later
)
def test_bf16_is_a_candidate_only_where_the_cpu_has_it(
    run, timed, monkeypatch, tmp_path, flags, bf16
):
    from resnetlab.core import device

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr(device.platform, "system", lambda: "Linux")
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k),
    )
    device.cpu_has_native_bf16.cache_clear()
    try:
        pairs = backend_choice.candidates(torch.device("cpu"))
        assert any(p == "bf16" for _, p in pairs) == bf16
        assert ("torch", "fp32") in pairs
        choice = backend_choice.choose_backend(load_model(run), "cpu")
        measured = {r["precision"] for r in choice.results}
        assert ("bf16" in measured) == bf16 and (choice.precision == "bf16") == bf16
        assert backend_choice.machine_key()["native_bf16"] == bf16
    finally:
        device.cpu_has_native_bf16.cache_clear()
