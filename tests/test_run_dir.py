"""ModelMeta and RunDir: model.json round-trips, old and newer files load, and no module but
run.py spells the name of a run's file."""

import ast
import json
from pathlib import Path

import pytest

import resnetlab
from resnetlab.artifacts.run import ModelMeta, RunDir, default_preset
from resnetlab.core.errors import WeightsError

# A model.json as `train` has always written it (key order included).
WRITTEN = {
    "model": "resnet20",
    "num_classes": 2,
    "in_chans": 3,
    "classes": ["ants", "红"],
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.2, 0.2],
    "preset": "cifar",
    "model_kwargs": {"widths": [8, 16, 16]},
    "weights": None,
    "resnetlab_version": "0.1.0",
}


def test_model_json_round_trips_byte_for_byte(tmp_path):
    text = json.dumps(WRITTEN, indent=2, ensure_ascii=False) + "\n"
    (tmp_path / RunDir.META).write_text(text, encoding="utf-8")
    meta = RunDir(tmp_path).read_meta()
    assert meta.classes == ["ants", "红"] and meta.size == 32 and meta.preset == "cifar"
    assert meta.dumps() == text
    assert list(meta.to_json()) == list(WRITTEN)


def test_old_model_json_without_later_keys_loads():
    old = {k: v for k, v in WRITTEN.items() if k not in ("preset", "resnetlab_version")}
    meta = ModelMeta.from_json(old)
    assert meta.preset == default_preset(32) == "cifar"
    assert meta.task is None and meta.temperature is None and meta.thresholds is None
    big = ModelMeta.from_json({**old, "input_size": [3, 224, 224]})
    assert big.preset == "imagenet"
    # The optional fields of later features stay out of the file until they are set.
    assert "task" not in meta.to_json() and "temperature" not in meta.to_json()


def test_unknown_keys_from_a_newer_file_survive():
    newer = {**WRITTEN, "temperature": 1.7, "crop_mode": "squash", "tags": {"a": [1]}}
    meta = ModelMeta.from_json(newer)
    assert meta.temperature == 1.7 and meta.extra == {
        "crop_mode": "squash",
        "tags": {"a": [1]},
    }
    assert meta.to_json() == newer
    assert ModelMeta.from_json(json.loads(meta.dumps())) == meta


@pytest.mark.parametrize("key", ["model", "num_classes", "classes", "input_size", "mean"])
def test_missing_key_is_a_weights_error(key):
    with pytest.raises(WeightsError, match=f"missing {key!r}"):
        ModelMeta.from_json({k: v for k, v in WRITTEN.items() if k != key}, "x/model.json")


def test_unreadable_model_json(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        RunDir(tmp_path).read_meta()
    (tmp_path / RunDir.META).write_text("{", encoding="utf-8")
    with pytest.raises(WeightsError, match="not valid JSON"):
        RunDir(tmp_path).read_meta()


def test_run_dir_files_and_contents(tmp_path):
    run = RunDir(tmp_path)
    assert run.weights == tmp_path / "model.safetensors" and run.eval_dir("val").name == "eval-val"
    assert run.export("onnx") == run.onnx and run.export("torchscript").name == "model.ts"
    assert run.read_summary() == {} and run.read_metrics() == [] and run.config_text() == ""
    assert run.only_startup_files() and not run.has_config()
    run.config.write_text("data: digits\nseed: 3\n", encoding="utf-8")
    run.metrics.write_text("epoch,lr,val_top1\n1,0.1,\n", encoding="utf-8")
    assert run.read_config() == {"data": "digits", "seed": 3}
    assert run.read_metrics() == [{"epoch": 1.0, "lr": 0.1, "val_top1": None}]
    assert run.only_startup_files()
    run.last_checkpoint.write_bytes(b"x")
    assert not run.only_startup_files()


def test_stale_temp_files_are_ours_only(tmp_path):
    run = RunDir(tmp_path)
    ours = tmp_path / ".checkpoint-last.pt.ab12_xYz.tmp"  # what io.atomic_write_bytes leaves
    theirs = tmp_path / "notes.tmp"
    ours.write_bytes(b"")
    theirs.write_bytes(b"")
    assert run.clear_stale_temp_files() == [ours]
    assert theirs.exists() and not ours.exists()


def _string_constants(tree: ast.AST):
    """Every string constant of a module that is not a docstring."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node


# Run-file names still spelled in modules that other changes are moving to RunDir; empty
# once they have.
PENDING: dict[str, set] = {}


def test_no_module_but_artifacts_run_spells_a_run_file_name():
    names = {v for k, v in vars(RunDir).items() if k.isupper() and isinstance(v, str)}
    package = Path(resnetlab.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel == "artifacts/run.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _string_constants(tree):
            if node.value in names and node.value not in PENDING.get(rel, ()):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == [], "use RunDir instead of spelling these names"
