"""Every DATA form, built in its original format, gives the exact samples, labels, classes."""

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_cifar, make_folder, make_mnist, write_idx
from resnetlab.cli.commands import main
from resnetlab.data import DataError, dataset_stats, load_source
from resnetlab.data.images import open_image


def test_digits_fixed_split():
    s = load_source("digits")
    assert s.classes == [str(i) for i in range(10)] and s.channels == 1
    assert {k: len(v) for k, v in s.splits.items()} == {"train": 1259, "val": 269, "test": 269}
    assert s.splits["train"].images.dtype == torch.uint8
    assert s.splits["train"].images.shape[1:] == (1, 8, 8)
    again = load_source("digits", seed=123)  # the split does not move with --seed
    assert torch.equal(again.splits["test"].labels, s.splits["test"].labels)
    from sklearn.datasets import load_digits

    d = load_digits()
    total = sum(int(v.images.sum()) for v in s.splits.values())
    assert total == int(np.rint(d.images * 255 / 16).sum())


@pytest.mark.parametrize("gz, nested", [(True, False), (False, True)])
def test_mnist_idx(tmp_path, gz, nested):
    folder = tmp_path / "MNIST" / "raw" if nested else tmp_path
    made = make_mnist(folder, gz=gz)
    s = load_source(f"mnist:{tmp_path}", val_ratio=0.2)
    assert s.classes == [str(i) for i in range(10)]
    assert len(s.splits["train"]) + len(s.splits["val"]) == 60
    assert len(s.splits["val"]) == 10  # 20 % of 6 per class, rounded, x 10 classes
    test = s.splits["test"]
    assert torch.equal(test.images[:, 0], torch.from_numpy(made["t10k"][0]))
    assert test.labels.tolist() == made["t10k"][1].tolist()
    train_imgs = torch.cat([s.splits["train"].images, s.splits["val"].images])
    assert sorted(train_imgs.sum(dim=(1, 2, 3)).tolist()) == sorted(
        made["train"][0].astype(np.int64).sum(axis=(1, 2)).tolist()
    )


def test_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*--download"):
        load_source(f"mnist:{tmp_path}")
    make_mnist(tmp_path, gz=False)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_source(f"mnist:{tmp_path}")
    write_idx(bad, np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="N images and N labels"):
        load_source(f"mnist:{tmp_path}")


@pytest.mark.parametrize("variant", [10, 100])
def test_cifar_pickles(tmp_path, variant):
    train, test = make_cifar(tmp_path, variant, per_batch=200 if variant == 100 else 20)
    s = load_source(f"cifar{variant}:{tmp_path}", val_ratio=0.1)
    assert len(s.classes) == variant and s.channels == 3
    assert s.classes[0] == ("class0" if variant == 10 else "c000")
    t = s.splits["test"]
    assert t.images.shape[1:] == (3, 32, 32)
    assert torch.equal(t.images.reshape(len(t), -1), torch.from_numpy(test[0]))
    assert t.labels.tolist() == test[1]
    n_train = sum(len(b[1]) for b in train)
    assert len(s.splits["train"]) + len(s.splits["val"]) == n_train


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    make_cifar(tmp_path, 10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_source(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_folder_presplit_unicode_and_junk(tmp_path):
    classes = {"当归": 4, "枸杞 子": 4, "café": 4}
    for split in ("train", "val"):
        make_folder(tmp_path / split, classes)
    (tmp_path / "train" / "当归" / "._img_0.png").write_bytes(b"\x00\x05junk")
    (tmp_path / "train" / "当归" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "__MACOSX").mkdir()
    (tmp_path / "train" / ".hidden").mkdir()
    (tmp_path / "train" / "café" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "train" / "café" / "readme.txt").write_text("notes")
    s = load_source(str(tmp_path))
    assert s.classes == sorted(classes)
    assert {k: len(v) for k, v in s.splits.items()} == {"train": 12, "val": 12}
    assert s.bad_files == [] and s.ignored_files == 1
    assert all("._" not in p.name for p in s.splits["train"].paths)
    assert s.class_counts("train") == {c: 4 for c in classes}


def test_folder_single_level_split_is_stratified_and_seeded(tmp_path):
    make_folder(tmp_path, {"a": 10, "b": 20})
    s = load_source(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=3)
    assert {k: len(v) for k, v in s.splits.items()} == {"train": 21, "val": 6, "test": 3}
    assert s.class_counts("val") == {"a": 2, "b": 4}
    same = load_source(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=3)
    assert same.splits["val"].paths == s.splits["val"].paths
    other = load_source(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=4)
    assert other.splits["val"].paths != s.splits["val"].paths


def _add_bad_files(folder):
    (folder / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:300])


def test_bad_files_skipped_or_abort(tmp_path):
    make_folder(tmp_path, {"a": 30, "b": 30})
    _add_bad_files(tmp_path / "a")
    with pytest.raises(DataError, match=r"2 of 62 files .* --max-bad-fraction") as exc:
        load_source(str(tmp_path))
    assert "zero.png: empty file" in str(exc.value) and "cut.jpg" in str(exc.value)
    s = load_source(str(tmp_path), max_bad_fraction=0.05)
    assert sum(len(v) for v in s.splits.values()) == 60
    assert sorted(b.reason.split(" ")[0] for b in s.bad_files) == ["corrupt", "empty"]


def test_empty_class_folder_is_named(tmp_path):
    make_folder(tmp_path, {"a": 3})
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class: class folder is empty"):
        load_source(str(tmp_path))


def test_csv_source(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 3, "y": 3})
    rows = ["path,label"]
    rows += [f"imgs/x/img_{k}.png,cat ü" for k in range(3)]
    rows += [f"imgs/y/img_{k}.png,dog" for k in range(3)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    s = load_source(f"csv:{tmp_path / 'list.csv'}", val_ratio=0.34, test_ratio=0.0)
    assert s.classes == ["cat ü", "dog"]
    assert s.class_counts() == {"cat ü": 3, "dog": 3}
    assert len(s.splits["val"]) == 2
    (tmp_path / "bad.csv").write_text("imgs/x/img_0.png\n")
    with pytest.raises(DataError, match="line 1"):
        load_source(f"csv:{tmp_path / 'bad.csv'}")


def test_csv_with_split_column(tmp_path):
    make_folder(tmp_path, {"x": 2, "y": 2})
    lines = [
        "x/img_0.png,x,train",
        "y/img_0.png,y,train",
        "x/img_1.png,x,test",
        "y/img_1.png,y,val",
    ]
    (tmp_path / "s.csv").write_text("\n".join(lines))
    s = load_source(f"csv:{tmp_path / 's.csv'}")
    assert {k: len(v) for k, v in s.splits.items()} == {"train": 2, "test": 1, "val": 1}


def test_unknown_data_string():
    with pytest.raises(DataError, match="digits, mnist:DIR"):
        load_source("no/such/folder")


def test_stats_match_direct_numpy(tmp_path, capsys):
    """Mean/std are the training split's, each image at the training resolution (the square
    training keeps it at) and weighing the same: a wide image counts as much as the others,
    not by its pixels; and they are what `train` takes with the same flags."""
    from resnetlab.data import DataConfig, build_pipeline
    from resnetlab.data.loader import cache_geometry

    make_folder(tmp_path, {"a": 5, "b": 7}, size=(30, 20))
    Image.new("RGB", (500, 100), (1, 2, 3)).save(tmp_path / "a" / "wide.png")
    _add_bad_files(tmp_path / "b")
    rc = main(["stats", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1  # bad files found
    assert report["num_images"] == 13
    assert report["classes"] == {"a": 6, "b": 7}
    assert sum(report["splits"].values()) == 13
    # The reference, image by image in float64: the split and the size train would use.
    source = load_source(str(tmp_path), max_bad_fraction=1.0)
    geometry = cache_geometry("cifar", 24)  # the images' median side 20, rounded to 8s: 24
    per_image = [
        np.asarray(geometry(open_image(path)), dtype=np.float64) / 255
        for path in source.splits["train"].paths
    ]
    means = np.array([x.mean(axis=(1, 2)) for x in per_image])
    squares = np.array([np.square(x).mean(axis=(1, 2)) for x in per_image])
    mean = means.mean(0)
    np.testing.assert_allclose(report["mean"], mean, atol=1e-12)
    np.testing.assert_allclose(report["std"], np.sqrt(squares.mean(0) - mean**2), atol=1e-12)
    assert report["stats_at"] == {"split": "train", "images": len(per_image), "size": [24, 24]}
    pipe = build_pipeline(
        DataConfig(data=str(tmp_path), max_bad_fraction=1.0), size_from_data=True, progress=False
    )
    np.testing.assert_allclose(pipe.mean, report["mean"], atol=1e-12)
    np.testing.assert_allclose(pipe.std, report["std"], atol=1e-12)
    assert report["sizes"]["min"] == [20, 30] and report["sizes"]["max"] == [100, 500]
    assert sorted(b["path"].rsplit("/", 1)[1] for b in report["bad_files"]) == [
        "cut.jpg",
        "zero.png",
    ]
    assert main(["stats", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "zero.png: empty file (0 bytes)" in out and "suggested: --mean" in out
    assert "each at 24x24 as training keeps it" in out


def test_stats_digits_in_memory():
    report = dataset_stats(load_source("digits"))
    assert report["num_images"] == 1797 and report["sizes"]["median"] == [8, 8]
    assert 0.29 < report["mean"][0] < 0.32
