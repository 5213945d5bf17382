"""`--data hf:NAME[:CONFIG]` and `--data hf-disk:PATH`: real `datasets` datasets built on the
fly (an Image column and a ClassLabel with Chinese names, or a sequence of them for
multi-label data), with their own splits, trained, evaluated and described by `stats`."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.data import load_source

D = pytest.importorskip("datasets")

NAMES = ["人参", "当归", "枸杞 子"]


def _image(c, rng, size=(32, 32)):
    a = np.full((size[1], size[0], 3), 60, np.uint8)
    a[..., c] = 210
    return Image.fromarray(a + rng.integers(0, 30, a.shape, dtype=np.uint8))


def _split(n, rng, sizes=None, label="label"):
    labels = [i % 3 for i in range(n)]
    images = [
        _image(c, rng, sizes[i % len(sizes)] if sizes else (32, 32)) for i, c in enumerate(labels)
    ]
    features = D.Features({"image": D.Image(), label: D.ClassLabel(names=NAMES)})
    return D.Dataset.from_dict({"image": images, label: labels}, features=features)


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A DatasetDict (train / validation / test) saved with save_to_disk."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("hf") / "herbs"
    D.DatasetDict(
        {"train": _split(24, rng), "validation": _split(9, rng), "test": _split(9, rng)}
    ).save_to_disk(str(path))
    return path


def _train(data, out, *flags):
    return main(
        [
            "train",
            "--data",
            data,
            "--model",
            "resnet20",
            "--model-kwargs",
            "widths=[4,8,8]",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--no-precise-bn",
            "--num-workers",
            "0",
            "--out",
            str(out),
            "--name",
            "r",
            "--quiet",
            *flags,
        ]
    )


def test_hf_disk_keeps_the_splits_classes_and_images(disk):
    source = load_source(f"hf-disk:{disk}")
    assert source.classes == NAMES and source.channels == 3
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 24, "val": 9, "test": 9}
    train = source.splits["train"]
    assert train.images.shape == (24, 3, 32, 32) and train.labels.tolist()[:4] == [0, 1, 2, 0]


def test_stats_train_and_evaluate_on_a_saved_dataset(disk, tmp_path, capsys):
    data = f"hf-disk:{disk}"
    assert main(["stats", data, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_images"] == 42
    assert stats["classes"] == {n: 14 for n in NAMES}
    assert stats["splits"] == {"train": 24, "val": 9, "test": 9}
    assert len(stats["mean"]) == 3
    assert _train(data, tmp_path) == 0
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"] == data and summary["classes"] == NAMES
    assert summary["test_top1"] is not None
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--backend", "torch"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["num_samples"] == 9 and ev["classes"] == NAMES
    assert set(ev["per_class"]) == set(NAMES)


def test_hf_name_reads_a_local_dataset_offline(tmp_path, monkeypatch):
    """`hf:` goes through datasets.load_dataset: a folder of parquet files, as the hub keeps
    them, read with the hub switched off (its cache, or a local copy)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "herbs-parquet"
    (root / "data").mkdir(parents=True)
    _split(24, rng).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    _split(9, rng).to_parquet(str(root / "data" / "validation-00000-of-00001.parquet"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    source = load_source(f"hf:{root}", test_ratio=0.0)
    assert source.classes == NAMES
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 24, "val": 9}
    assert _train(f"hf:{root}", tmp_path / "runs") == 0


def test_images_of_several_sizes_are_read_as_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    path = tmp_path / "sizes"
    _split(18, rng, sizes=[(40, 30), (36, 36), (50, 44)]).save_to_disk(str(path))  # one split
    source = load_source(f"hf-disk:{path}", val_ratio=0.2, test_ratio=0.2)
    assert set(source.splits) == {"train", "val", "test"}  # carved from the one split
    assert sum(len(s) for s in source.splits.values()) == 18
    train = source.splits["train"]
    assert train.images is None and all(p.is_file() for p in train.paths)
    assert str(tmp_path / "cache" / "resnetlab" / "hf") in str(train.paths[0])
    assert {tuple(s) for s in train.sizes} <= {(30, 40), (36, 36), (44, 50)}
    assert _train(f"hf-disk:{path}", tmp_path / "runs", "--input-size", "32") == 0


def test_a_sequence_of_class_labels_is_multilabel(tmp_path, capsys):
    rng = np.random.default_rng(3)
    labels = [[0], [1, 2], [0, 2], [], [1], [0, 1, 2]] * 4
    features = D.Features({"img": D.Image(), "tags": D.Sequence(D.ClassLabel(names=NAMES))})
    ds = D.Dataset.from_dict(
        {"img": [_image(i % 3, rng) for i in range(len(labels))], "tags": labels}, features=features
    )
    path = tmp_path / "ml"
    D.DatasetDict({"train": ds, "test": ds.select(range(6))}).save_to_disk(str(path))
    source = load_source(f"hf-disk:{path}", task="multilabel", val_ratio=0.25)
    assert source.multilabel and source.classes == NAMES
    assert source.splits["test"].labels.tolist()[1] == [0.0, 1.0, 1.0]
    assert _train(f"hf-disk:{path}", tmp_path / "runs", "--task", "multilabel") == 0
    capsys.readouterr()
    assert _train(f"hf-disk:{path}", tmp_path / "runs2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task multilabel" in err


def test_problems_are_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "noimage"
    D.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(str(path))
    capsys.readouterr()
    assert main(["stats", f"hf-disk:{path}"]) == 2
    err = capsys.readouterr().err
    assert "no Image column" in err and len(err.strip().splitlines()) == 1
    assert main(["stats", f"hf-disk:{tmp_path / 'nowhere'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert main(["stats", "hf:someone/no-such-dataset-here"]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_hub_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    """The hub's libraries read HF_HUB_OFFLINE once, at import: set later (a notebook, a
    script) it still counts; and a machine that cannot reach the hub gets its one line at
    once, not after the hub's retries and their warnings."""
    import socket
    import time

    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["stats", "hf:someone/no-such-dataset-here"]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and len(err.strip().splitlines()) == 1
    assert hub_constants.HF_HUB_OFFLINE is False  # put back
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    started = time.monotonic()
    assert main(["stats", "hf:someone/no-such-dataset-here"]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 10  # no retries (they take 23 s)


def test_a_missing_datasets_package_names_the_extra(tmp_path, capsys, monkeypatch):
    path = tmp_path / "noimage"
    D.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(str(path))
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["stats", f"hf-disk:{path}"]) == 2
    assert "pip install 'resnetlab[hf]'" in capsys.readouterr().err


def test_hf_stream_reads_the_stream_once_into_shards_and_trains_from_them(
    tmp_path, monkeypatch, capsys
):
    """`hf-stream:` opens the dataset with streaming=True (a folder of parquet files, as the
    hub keeps them), writes its samples as they come into shards in the cache, carves val
    from train by the seed, and trains, evaluates and describes it as `wds:` data; a second
    load reads the shards, not the stream."""
    pytest.importorskip("webdataset")
    rng = np.random.default_rng(4)
    root = tmp_path / "herbs-parquet"
    (root / "data").mkdir(parents=True)
    _split(40, rng, sizes=[(40, 30), (32, 32)]).to_parquet(
        str(root / "data" / "train-00000-of-00001.parquet")
    )
    _split(9, rng).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # datasets waits 5 s after a parquet stream for Arrow's threads (apache/arrow#45214)
    monkeypatch.setattr(D.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.05)
    source = load_source(f"hf-stream:{root}", val_ratio=0.25)
    assert source.name == f"hf-stream:{root}" and source.classes == NAMES
    assert all(s.streamed for s in source.splits.values())
    sizes = {k: len(v) for k, v in source.splits.items()}
    assert sizes["test"] == 9 and sizes["train"] + sizes["val"] == 40 and 4 <= sizes["val"] <= 18
    assert not list((tmp_path / "hf-home").rglob("*.arrow"))  # nothing loaded into Arrow
    folder = source.splits["train"].shards.files[0].parent
    assert folder.parent == tmp_path / "cache" / "resnetlab" / "hf-stream"
    # every class in train, in an order the shuffle mixed (the parquet holds 0, 1, 2, 0 ...)
    counts = source.splits["train"].shards.class_counts
    assert sum(counts) == sizes["train"] and min(counts) > 0
    # the index keeps the images' sizes, so a new run chooses its input size from them
    assert set(source.splits["train"].sizes) == {(30, 40), (32, 32)}

    # the same settings read the same shards again; another seed draws other splits
    stamp = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    again = load_source(f"hf-stream:{root}", val_ratio=0.25)
    assert {k: len(v) for k, v in again.splits.items()} == sizes
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == stamp
    other = load_source(f"hf-stream:{root}", val_ratio=0.25, seed=1)
    assert other.splits["train"].shards.files[0].parent != folder

    data = f"hf-stream:{root}"
    assert _train(data, tmp_path / "runs", "--val-ratio", "0.25") == 0
    capsys.readouterr()
    run = tmp_path / "runs" / "r"
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert meta["input_size"] == [3, 32, 32] and meta["preset"] == "cifar"  # from the images
    assert main(["evaluate", str(run), "--json", "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 9
    assert main(["stats", data, "--val-ratio", "0.25"]) == 0
    assert "人参" in capsys.readouterr().out
    # a sequence of labels cannot be kept as shards: one line saying what to use
    assert main(["stats", data, "--task", "multilabel"]) == 2
    assert "multilabel" in capsys.readouterr().err
