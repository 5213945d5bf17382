"""Which numeric path `--precision auto` picks for the device at hand."""

import pytest
import torch

from resnetlab.core import device as precision
from resnetlab.core.device import resolve_precision


@pytest.mark.parametrize(
    ("capability", "want"), [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_on_cuda_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, want):
    # A T4 or V100 emulates bf16 (torch.cuda.is_bf16_supported() still says yes): fp16 there.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 0)) == want
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ("fpu avx512f avx512_bf16", "bf16"),
        ("fpu amx_bf16 amx_tile", "bf16"),
        ("fpu avx2 fma", "fp32"),
    ],
)
def test_auto_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, tmp_path, flags, want):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k),
    )
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert resolve_precision("auto", torch.device("cpu")) == want
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_fp16_on_the_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_device_choice(monkeypatch):
    from resnetlab.core.device import resolve_device
    from resnetlab.core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    for spec, words in [
        ("cuda", "no CUDA GPU"),
        ("cuda:1", "no CUDA GPU"),
        ("mps", "MPS"),
        ("tpu", "is not one of"),
        ("cuda:x", "is not one of"),
    ]:
        with pytest.raises(ConfigError, match=words):
            resolve_device(spec)
    monkeypatch.setattr(precision, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")  # MPS before the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")  # CUDA first
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="2 CUDA GPU"):
        resolve_device("cuda:2")


def test_precision_on_mps_and_unknown_names():
    from resnetlab.core.errors import ConfigError

    mps = torch.device("mps")
    assert resolve_precision("auto", mps) == "fp32" and resolve_precision("fp16", mps) == "fp16"
    with pytest.raises(ConfigError, match="not one of"):
        resolve_precision("int4", torch.device("cpu"))


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["evaluate", "RUN"],
        ["predict", "RUN", "x.jpg"],
        ["serve", "RUN"],
        ["experiment", "degradation"],
        ["tune"],
    ],
)
def test_every_command_that_runs_a_model_takes_device(argv):
    from resnetlab.cli.parser import build_parser

    assert build_parser().parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"


def test_experiment_and_tune_hand_the_device_to_their_runs(monkeypatch):
    from resnetlab.cli import commands as cli
    from resnetlab.experiments import degradation, tune

    seen = {}
    monkeypatch.setattr(degradation, "run_degradation", lambda **kw: seen.update(kw) or 1 / 0)
    monkeypatch.setattr(tune, "run_tune", lambda base, **kw: seen.update(base) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["experiment", "degradation", "--device", "cpu"])
    assert seen.pop("overrides")["device"] == "cpu"
    with pytest.raises(ZeroDivisionError):
        cli.main(["tune", "--device", "cpu"])
    assert seen["device"] == "cpu"
    seen.clear()
    with pytest.raises(ZeroDivisionError):
        cli.main(["tune"])  # not given: a continued study keeps its own, a new one auto
    assert "device" not in seen
