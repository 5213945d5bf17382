"""Each inference backend gives PyTorch's logits (int8 within its quantization error); a new
backend is one class and one registry entry; streams keep order and the caller's threads."""

import threading

import pytest
import torch

from datagen import make_folder
from resnetlab import create_model
from resnetlab.artifacts.run import ModelMeta, RunDir
from resnetlab.artifacts.weights import save_bundle
from resnetlab.core.errors import ConfigError
from resnetlab.inference.backends import (
    BACKENDS,
    OPENVINO_CACHE,
    Backend,
    OnnxBackend,
    OnnxInt8Backend,
    TorchBackend,
    create_backend,
    fingerprint,
    register_backend,
    run_streams,
)
from resnetlab.inference.export import export
from resnetlab.inference.loading import load_model, run_pipeline
from resnetlab.inference.predict import Predictor
from resnetlab.metrics.fingerprint import weights_fingerprint

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Weights and metadata (no training), with its fp32 and int8 ONNX exports."""
    root = tmp_path_factory.mktemp("backends")
    data = make_folder(root / "data", {c: 8 for c in CLASSES}, size=(36, 36))
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, widths=[4, 8, 8]).eval()
    meta = ModelMeta(
        model="resnet20",
        num_classes=3,
        in_chans=3,
        classes=CLASSES,
        input_size=[3, 32, 32],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        model_kwargs={"widths": [4, 8, 8]},
    )
    folder = root / "model"
    save_bundle(model, meta, folder)
    export(folder / RunDir.WEIGHTS, "onnx", int8=True, calibration=8, data=str(data))
    return folder


@pytest.fixture(scope="module")
def images(model_dir):
    """Real images of the data the int8 model was calibrated on, preprocessed."""
    loaded = load_model(model_dir / RunDir.WEIGHTS)
    pipe = run_pipeline(loaded, data=str(model_dir.parent / "data"), batch_size=16, num_workers=0)
    loader, transform = pipe.split_loader("train", channels_last=False)
    return transform(next(iter(loader))[0])


def _batch(n=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _reference(folder, x):
    with torch.no_grad():
        return load_model(folder / RunDir.WEIGHTS).model(x)


def test_every_registered_backend_is_here():
    assert list(BACKENDS) == ["torch", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
    assert BACKENDS["torch"] is TorchBackend and BACKENDS["onnx-int8"] is OnnxInt8Backend


@pytest.mark.parametrize("name", ["torch", "onnx", "openvino"])
def test_fp32_backends_give_pytorch_logits(model_dir, name):
    loaded = load_model(model_dir / RunDir.WEIGHTS)
    backend = create_backend(name, loaded, device="cpu", precision="fp32")
    assert backend.precision == "fp32" and backend.device == torch.device("cpu")
    x = _batch()
    out = backend.logits(x.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (5, 3)
    torch.testing.assert_close(out, _reference(model_dir, x), atol=1e-4, rtol=1e-4)


def test_int8_backend_is_close_to_pytorch(model_dir, images):
    loaded = load_model(model_dir / RunDir.WEIGHTS)
    backend = create_backend("onnx-int8", loaded)
    assert backend.precision == "int8" and isinstance(backend, OnnxBackend)
    out, ref = backend.logits(images), _reference(model_dir, images)
    # Quantization error of a tiny untrained net (4 channels wide): about a tenth of the
    # logits on average, never of their size; a wrong graph or input layout is far off.
    error = (out - ref).abs()
    assert error.mean() <= 0.2 * ref.abs().mean() and error.max() <= 0.3 * ref.abs().max()


def test_backend_errors(model_dir, tmp_path):
    loaded = load_model(model_dir / RunDir.WEIGHTS)
    with pytest.raises(ConfigError, match="--backend 'tensorrt' is not one of torch, onnx"):
        create_backend("tensorrt", loaded)
    with pytest.raises(ConfigError, match="onnx backends"):
        create_backend("torch", loaded, path=model_dir / RunDir.ONNX)
    bare = tmp_path / "bare"
    save_bundle(loaded.model, loaded.meta, bare)
    with pytest.raises(
        FileNotFoundError, match=r"no int8 ONNX model; run `resnetlab export .* --int8"
    ):
        create_backend("onnx-int8", load_model(bare))


def test_a_new_backend_is_one_class_and_one_entry(model_dir):
    calls = []

    @register_backend
    class Doubled(Backend):
        name = "test-doubled"
        precision = "fp32"

        def __init__(self, loaded, device=None, precision="auto", path=None):
            self.device, self.model = torch.device("cpu"), loaded.model

        def logits(self, batch):
            calls.append(len(batch))
            with torch.no_grad():
                return 2 * self.model(batch)

    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_backend(Doubled)
        p = Predictor(model_dir, backend="test-doubled", batch_size=4)
        assert p.precision == "fp32" and p.stream_count(3) == 1
        x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
        torch.testing.assert_close(
            p.logits(x), 2 * Predictor(model_dir, precision="fp32").logits(x), atol=1e-4, rtol=1e-4
        )
        assert calls == [3]
    finally:
        del BACKENDS["test-doubled"]


def test_run_streams_keeps_order_and_the_callers_threads():
    threads = torch.get_num_threads()
    seen = set()

    def work(n):
        seen.add(threading.current_thread().name)
        return n * n

    assert run_streams(9, 2, work) == [n * n for n in range(9)]
    assert torch.get_num_threads() == threads and all(s.startswith("stream") for s in seen)
    assert run_streams(0, 2, work) == []


@pytest.fixture
def own_run(tmp_path):
    """A run folder of its own: the OpenVINO cache tests write into it."""
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=3, widths=[4, 8, 8]).eval()
    meta = ModelMeta(
        model="resnet20",
        num_classes=3,
        in_chans=3,
        classes=CLASSES,
        input_size=[3, 32, 32],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        model_kwargs={"widths": [4, 8, 8]},
    )
    save_bundle(model, meta, tmp_path / "run")
    return tmp_path / "run"


def _cache_folders(run):
    return sorted(p.name for p in (run / OPENVINO_CACHE).iterdir())


def test_openvino_reuses_its_compiled_model_and_never_a_stale_one(own_run, monkeypatch):
    pytest.importorskip("openvino")
    import resnetlab.inference.backends as backends

    loaded = load_model(own_run)
    x = _batch()
    first = create_backend("openvino", loaded)
    (folder,) = _cache_folders(own_run)
    assert folder.startswith("openvino-") and list(
        (own_run / OPENVINO_CACHE / folder).glob("*.blob")
    )
    # Found again: neither the graph nor the export's weights are read a second time.
    reads = []
    monkeypatch.setattr(backends, "_openvino_read", lambda *a: reads.append(a) or 1 / 0)
    again = create_backend("openvino", load_model(own_run))
    assert reads == [] and _cache_folders(own_run) == [folder]
    torch.testing.assert_close(again.logits(x), first.logits(x), atol=0, rtol=0)
    monkeypatch.undo()
    # Other weights: the stale export is rebuilt and compiled into a new folder (the old one
    # goes); the outputs are those of the new weights.
    changed = load_model(own_run)
    with torch.no_grad():
        changed.model.fc.bias.add_(1.0)
    save_bundle(changed.model, changed.meta, own_run)
    rebuilt = create_backend("openvino", load_model(own_run))
    assert len(_cache_folders(own_run)) == 1 and _cache_folders(own_run) != [folder]
    torch.testing.assert_close(rebuilt.logits(x), _reference(own_run, x), atol=1e-4, rtol=1e-4)


def test_openvino_compiles_a_given_file_without_caching(model_dir, tmp_path):
    pytest.importorskip("openvino")
    import shutil

    given = tmp_path / "elsewhere.onnx"
    shutil.copy(model_dir / RunDir.ONNX, given)
    loaded = load_model(model_dir / RunDir.WEIGHTS)
    before = set(model_dir.iterdir())
    backend = create_backend("openvino", loaded, path=given)
    assert set(model_dir.iterdir()) == before  # nothing written beside the weights
    x = _batch()
    torch.testing.assert_close(backend.logits(x), _reference(model_dir, x), atol=1e-4, rtol=1e-4)


def test_the_weights_fingerprint_follows_every_change():
    model = create_model("resnet20", num_classes=3, widths=[4, 8, 8])
    first = fingerprint(model)
    assert fingerprint(model) == first == weights_fingerprint(model)
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # in place
    assert fingerprint(model) == weights_fingerprint(model) != first
    model.fc.bias = torch.nn.Parameter(torch.zeros(3))  # replaced
    assert fingerprint(model) == weights_fingerprint(model)
