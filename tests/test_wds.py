"""WebDataset shards: written from every DATA form, read back with the same classes and counts,
every sample once per epoch across ranks and workers, resumable, corrupt members skipped."""

import contextlib
import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_cifar, make_folder, make_mnist
from resnetlab.cli.commands import main
from resnetlab.data import DataError, load_source, parse_size, write_shards
from resnetlab.data.images import image_to_uint8, open_image
from resnetlab.data.stats import channel_stats
from resnetlab.data.stream import ShardLoader, stream_stats
from resnetlab.data.transforms import file_transform
from resnetlab.data.wds import decode_image, decode_sample, epoch_plan, read_segment

webdataset = pytest.importorskip("webdataset")
TF = file_transform("small", 8, train=False)  # tiny images: the tests look at keys


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # Non-ASCII and spaced class names must survive the index.
    return make_folder(root / "imgs", {"黄芪": 14, "wolfberry 枸杞子": 12, "c": 9}, size=(20, 20))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "wds"
    write_shards(str(folder), out, shard_size_bytes=24_000)
    return out


def _uneven(root, counts, classes=3, corrupt=(), suffix=".tar"):
    """train-NNNNNN.tar files holding ``counts`` samples, no index (read by a scan)."""
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s, n in enumerate(counts):
        with webdataset.TarWriter(str(root / f"train-{s:06d}{suffix}"), encoder=False) as w:
            for _ in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (6, 5), (k % 256, 9, 9)).save(buf, "PNG")
                ext, data = (
                    ("jpg", b"\xff\xd8\xffgarbage") if k in corrupt else ("png", buf.getvalue())
                )
                w.write({"__key__": f"s{k:04d}", "cls": str(k % classes).encode(), ext: data})
                k += 1
    return root


def _keys(shards, world, workers, train=False, epoch=0, start=0, batch=4):
    per_rank = []
    for rank in range(world):
        loader = ShardLoader(
            shards,
            batch,
            shuffle=train,
            drop_last=train,
            transform=TF,
            channels=3,
            num_classes=3,
            seed=5,
            rank=rank,
            world_size=world,
            num_workers=workers,
            return_keys=True,
        )
        loader.sampler.set_epoch(epoch, start)
        batches = [names for _, _, names in loader]
        assert len(batches) == len(loader) - start
        per_rank.append(batches)
    return per_rank


def test_parse_size():
    assert parse_size("1GB") == 2**30 == parse_size("1GiB") == parse_size("1g")
    assert parse_size("500MB") == 500 * 2**20
    assert parse_size("1.5k") == 1536 and parse_size("4096") == 4096 == parse_size(4096)
    for bad in ("big", "0", "-1MB", "1PB"):
        with pytest.raises(DataError, match="size"):
            parse_size(bad)


def test_folder_round_trip(folder, shards):
    original, back = load_source(str(folder)), load_source(f"wds:{shards}")
    assert back.classes == original.classes
    assert {k: len(v) for k, v in back.splits.items()} == {
        k: len(v) for k, v in original.splits.items()
    }
    assert back.class_counts() == original.class_counts() and back.kind == "folder"
    index = json.loads((shards / "index.json").read_text(encoding="utf-8"))
    assert len(index["splits"]["train"]["shards"]) > 1
    # The original file's bytes, not a re-encoding.
    val = original.splits["val"]
    name, sample = next(read_segment(shards / "val-000000.tar", 0, 1))
    assert sample["png"] == val.paths[0].read_bytes() and int(sample["cls"]) == int(val.labels[0])
    # Mean/std: in the index, and the same when decoded from the shards (no index).
    ref = channel_stats([original.splits["train"]], 3)
    assert np.allclose(index["train_stats"]["mean"], ref[0])
    got = stream_stats(back.splits["train"].shards, 3, limit=10**6)
    assert np.allclose(got, ref)
    # A pattern of some training shards: that split from them, the others from the index.
    part = load_source(f"wds:{shards}/train-{{000000..000001}}.tar")
    assert part.classes == original.classes and len(part.splits["val"]) == len(val)
    assert len(part.splits["train"]) < len(original.splits["train"])


@pytest.mark.parametrize("form", ["mnist", "cifar10"])
def test_in_memory_sources_round_trip_as_png(tmp_path, form):
    if form == "mnist":
        make_mnist(tmp_path / "raw", n_train=30, n_test=10)
    else:
        make_cifar(tmp_path / "raw", per_batch=6)
    original = load_source(f"{form}:{tmp_path / 'raw'}")
    write_shards(original, tmp_path / "wds")
    back = load_source(f"wds:{tmp_path / 'wds'}")
    assert back.classes == original.classes and back.channels == original.channels
    assert {k: len(v) for k, v in back.splits.items()} == {
        k: len(v) for k, v in original.splits.items()
    }
    test = original.splits["test"]  # written in order: sample k is image k, losslessly
    _, sample = list(read_segment(tmp_path / "wds" / "test-000000.tar", 0, 3))[2]
    img, label = decode_sample(sample, original.channels, 10, "x")
    assert torch.equal(image_to_uint8(img), test.images[2]) and label == int(test.labels[2])


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch(tmp_path, world, workers):
    counts = [7, 2, 6]  # uneven: 3 shards over 2 ranks, 2 workers each
    src = load_source(f"wds:{_uneven(tmp_path, counts)}")
    assert src.classes == ["0", "1", "2"] and len(src.splits["train"]) == 15
    shards = src.splits["train"].shards
    every = sorted(f"s{k:04d}" for k in range(15))
    # Evaluation: each sample exactly once across ranks.
    seen = [n.rsplit(":", 1)[1] for r in _keys(shards, world, workers) for b in r for n in b]
    assert sorted(seen) == every
    # Training: every rank the same number of steps, no sample twice, a new order per epoch.
    for epoch in (0, 1):
        ranks = _keys(shards, world, workers, train=True, epoch=epoch)
        assert len({len(r) for r in ranks}) == 1
        flat = [n for r in ranks for b in r for n in b]
        assert len(flat) == len(set(flat)) == world * (15 // world // 4) * 4
    assert _keys(shards, world, workers, train=True, epoch=1) == ranks
    assert _keys(shards, world, workers, train=True, epoch=0) != ranks


def test_compressed_shards_and_persistent_workers_follow_the_epoch(tmp_path):
    _uneven(tmp_path, [7, 6], suffix=".tar.gz")
    shards = load_source(f"wds:{tmp_path}/train-{{000000..000001}}.tar.gz").splits["train"].shards
    (once,) = _keys(shards, 1, 2)  # the second lane starts inside a gzipped shard
    assert sorted(n.rsplit(":", 1)[1] for b in once for n in b) == [f"s{k:04d}" for k in range(13)]
    loader = ShardLoader(
        shards,
        4,
        shuffle=True,
        drop_last=True,
        transform=TF,
        channels=3,
        num_classes=3,
        num_workers=2,
        return_keys=True,
    )
    epochs = []
    for epoch in (0, 1, 0):  # the same workers throughout: they read the epoch it is
        loader.sampler.set_epoch(epoch)
        epochs.append([names for _, _, names in loader])
    assert epochs[0] == epochs[2] != epochs[1]


def test_plan_cuts_shards_by_count_and_covers_everything():
    counts = [5, 0, 11, 3, 9]
    for world in (1, 2, 3):
        got = []
        for rank in range(world):
            for lane in epoch_plan(
                counts,
                4,
                shuffle=False,
                drop_last=False,
                seed=0,
                epoch=0,
                rank=rank,
                world_size=world,
                lanes=3,
            ):
                assert sum(b - a for _, a, b in lane.segments) == sum(lane.sizes)
                got += [(s, i) for s, a, b in lane.segments for i in range(a, b)]
        assert sorted(got) == [(s, i) for s, n in enumerate(counts) for i in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_skips_the_first_batches(tmp_path, workers):
    shards = load_source(f"wds:{_uneven(tmp_path, [9, 8, 7])}").splits["train"].shards
    (full,) = _keys(shards, 1, workers, train=True, epoch=3)
    (rest,) = _keys(shards, 1, workers, train=True, epoch=3, start=3)
    assert len(full) == 6 and rest == full[3:]


def test_corrupt_member_is_skipped_and_counted(tmp_path, caplog):
    src = load_source(f"wds:{_uneven(tmp_path, [6, 6], corrupt={4})}")
    shards = src.splits["train"].shards
    kw = dict(shuffle=False, drop_last=False, transform=TF, channels=3, num_classes=3)
    loader = ShardLoader(shards, 4, **kw, max_bad_fraction=0.1, bad_files=src.bad_files)
    with caplog.at_level(logging.WARNING):
        n = sum(len(y) for _, y in loader)
    assert n == 11 and len(src.bad_files) == 1
    assert src.bad_files[0].path.endswith("train-000000.tar:s0004.jpg")
    # The reason open_image gives a garbage file in a folder.
    assert "not an image" in src.bad_files[0].reason and "s0004" in caplog.text
    sum(len(y) for _, y in loader)  # a second epoch lists it once
    assert len(src.bad_files) == 1
    with pytest.raises(DataError, match="max-bad-fraction"):
        list(ShardLoader(shards, 4, **kw, max_bad_fraction=0.0))


def test_jpeg_fast_path_gives_open_images_pixels(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    for kw in ({}, {"exif": exif.tobytes()}):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85, **kw)
        data = buf.getvalue()
        fast, ref = decode_image(data, 3, "x.jpg"), open_image(data, 3)
        assert isinstance(fast, np.ndarray) and np.array_equal(fast, np.asarray(ref))
        # the evaluation transform takes it as it takes the image (val and test of shards)
        for preset in ("small", "imagenet"):
            tf = file_transform(preset, 16, train=False)
            assert torch.equal(tf(fast), tf(ref))
    grey = io.BytesIO()
    Image.fromarray(a[..., 0]).save(grey, "JPEG")
    assert np.array_equal(
        np.asarray(decode_image(grey.getvalue(), 1, "g")).squeeze(),
        np.asarray(open_image(grey.getvalue(), 1)),
    )
    with pytest.raises(DataError, match="x.jpg: .*truncated"):
        decode_image(data[: len(data) // 2], 3, "x.jpg")


def test_missing_or_foreign_data_says_what_to_do(tmp_path, shards):
    with pytest.raises(DataError, match="resnetlab shard"):
        load_source(f"wds:{tmp_path}")
    with pytest.raises(DataError, match="no such shard"):
        load_source(f"wds:{tmp_path}/train-{{000000..000001}}.tar")
    with pytest.raises(Exception, match="not an empty folder"):
        write_shards("digits", shards)


def test_train_from_shards(tmp_path, shards):
    tiny = [
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--batch-size",
        "8",
        "--input-size",
        "16",
        "--epochs",
        "1",
        "--num-workers",
        "0",
    ]
    code = main(["train", "--data", f"wds:{shards}", *tiny, "--out", str(tmp_path), "--name", "r"])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"] == ["c", "wolfberry 枸杞子", "黄芪"]
    assert summary["epochs_completed"] == 1 and summary["test_top1"] is not None


def test_engine_resume_on_shards_is_bit_exact(tmp_path, shards):
    # Two workers: the lanes rotate on resume (the loader test covers 0 and 2).
    workers = 2
    from resnetlab.train import RunStopped, Trainer, resolve_config

    kw = dict(
        model="resnet20",
        model_kwargs={"widths": [4, 8, 8]},
        batch_size=8,
        epochs=2,
        data=f"wds:{shards}",
        input_size=16,
        num_workers=workers,
        out=str(tmp_path),
        precision="fp32",
        deterministic=True,
        warmup_epochs=0.0,
    )

    def losses(cfg, resume=None):
        t = Trainer(resolve_config(cfg), resume=resume, verbose=False)
        with contextlib.suppress(RunStopped):
            t.fit()
        return t.step_losses, t

    full, t_full = losses(dict(kw, name="full"))
    steps = len(t_full.train_loader)
    first, _ = losses(dict(kw, name="cut", max_steps=steps + 1))  # stops inside epoch 2
    rest, t_res = losses(dict(kw, name="cut"), resume=tmp_path / "cut")
    assert first + rest == full and len(full) == 2 * steps
    a, b = t_full.model.state_dict(), t_res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_index_keeps_image_sizes_so_stats_and_a_new_run_use_them(shards, tmp_path, capsys):
    from resnetlab.data.stats import dataset_stats, training_resolution

    source = load_source(f"wds:{shards}")
    report = dataset_stats(source)
    assert report["sizes"]["min"] == [20, 20] and report["sizes"]["sampled"] == 35
    assert training_resolution(source)[:2] == ("cifar", 24)  # from the images, not 224
    # shards without an index: sizes unknown, said so, never 0x0
    bare = load_source(f"wds:{_uneven(tmp_path / 'bare', [5, 4])}")
    assert dataset_stats(bare)["sizes"]["min"] is None
    assert main(["stats", f"wds:{tmp_path / 'bare'}"]) == 0
    out = capsys.readouterr().out
    assert "sizes     unknown" in out and "0x0" not in out
