"""`export --format openvino`: an OpenVINO IR whose logits are PyTorch's (verified as the ONNX
export is, bf16 reported where the CPU has it), any batch size, the preprocessing and classes
in its runtime info; `--int8` adds the calibrated int8 IR."""

import json
import shutil

import numpy as np
import pytest
import torch

from resnetlab.cli.commands import main
from resnetlab.inference.export import real_inputs
from resnetlab.inference.loading import load_model

ov = pytest.importorskip("openvino")


def test_the_ir_gives_pytorchs_logits_and_carries_its_preprocessing(trained_run, tmp_path, capsys):
    from resnetlab.inference.openvino_ir import read_rt_info

    out = tmp_path / "ir" / "model.xml"
    assert (
        main(["export", str(trained_run), "--format", "openvino", "--out", str(out), "--verify"])
        == 0
    )
    said = capsys.readouterr().out
    assert f"wrote {out} (+ .bin" in said and "verified real images: max |difference|" in said
    assert "bf16" in said
    assert out.with_suffix(".bin").is_file()
    loaded = load_model(trained_run)
    meta = loaded.meta
    info = read_rt_info(out)
    ours = info["resnetlab"]
    assert json.loads(ours["classes"]) == meta.classes
    pre = json.loads(ours["preprocessing"])
    assert pre["input_size"] == meta.input_size and pre["mean"] == pytest.approx(meta.mean)
    assert pre["resize"] == "both_sides" and pre["temperature"] == pytest.approx(meta.temperature)
    assert ours["precision"] == "fp32" and len(ours["weights_sha256"]) == 64
    model_info = info["model_info"]
    assert model_info["model_type"] == "Classification"
    assert [float(v) for v in model_info["mean_values"].split()] == pytest.approx(
        [m * 255 for m in meta.mean], rel=1e-5
    )
    assert model_info["labels"].split() == meta.classes
    # any batch size; the logits of PyTorch
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = real_inputs(trained_run)[:3].float()
    got = compiled(x.numpy())[compiled.outputs[0]]
    model = loaded.model.float().eval()
    with torch.inference_mode():
        want = model(x.contiguous()).numpy()
    assert got.shape == (3, meta.num_classes)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert compiled.inputs[0].get_names() >= {"input"}
    assert compiled.outputs[0].get_names() >= {"logits"}


def test_int8_ir_and_the_default_place(trained_run, tmp_path, capsys):
    from resnetlab.inference.openvino_ir import read_rt_info

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["export", str(run), "--format", "openvino", "--int8", "--calibration", "16"]) == 0
    said = capsys.readouterr().out
    assert (run / "model.xml").is_file() and (run / "model.int8.xml").is_file()
    assert "int8; calibrated on 16 train images" in said
    assert read_rt_info(run / "model.int8.xml")["resnetlab"]["precision"] == "int8"
    compiled = ov.Core().compile_model(str(run / "model.int8.xml"), "CPU")
    x = real_inputs(run)
    got = compiled(x.float().numpy())[compiled.outputs[0]]
    assert got.shape[0] == len(x) and np.isfinite(got).all()
    # exported again: the earlier export is replaced
    assert main(["export", str(run), "--format", "openvino"]) == 0


def test_other_files_are_left_alone(trained_run, tmp_path, capsys):
    theirs = tmp_path / "theirs.xml"
    theirs.write_text("<net/>")
    assert main(["export", str(trained_run), "--format", "openvino", "--out", str(theirs)]) == 2
    assert "not a resnetlab export" in capsys.readouterr().err
    assert theirs.read_text() == "<net/>"
    assert (
        main(
            ["export", str(trained_run), "--format", "openvino", "--out", str(tmp_path / "m.onnx")]
        )
        == 2
    )
    assert "an OpenVINO IR is an .xml file" in capsys.readouterr().err
