"""Data larger than the demos: each file decoded once before training (its check, its square in
the in-memory cache and its statistics from that one decode), statistics summed a bounded chunk
at a time (never a float64 copy of the cache), the cache filled in place under its limit, and
the progress of the decoding printed where a log can show it."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import make_folder
from resnetlab.data import DataConfig, build_pipeline, load_source
from resnetlab.data import decode as decode_module
from resnetlab.data import moments as moments_module
from resnetlab.data.images import open_image
from resnetlab.data.loader import cache_geometry
from resnetlab.data.moments import image_moments, stats_from_moments


def _reference(images: torch.Tensor) -> np.ndarray:
    x = images.numpy().astype(np.float64) / 255
    return np.stack([x.mean(axis=(2, 3)), np.square(x).mean(axis=(2, 3))], axis=1)


@pytest.mark.parametrize("chunk", [8 * 2**20, 1000, 10])  # whole images; rows of one image
def test_image_moments_equal_a_float64_reference_per_image(monkeypatch, chunk):
    monkeypatch.setattr(moments_module, "CHUNK_BYTES", chunk)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 19, 23), dtype=torch.uint8, generator=g)
    images[2] = 255  # the largest square sums
    got = image_moments(images)
    np.testing.assert_allclose(got, _reference(images), rtol=0, atol=1e-14)
    one = image_moments(images[3])  # a single (C, H, W) image
    np.testing.assert_allclose(one[0], got[3], rtol=0, atol=0)
    mean, std = stats_from_moments(got)
    x = images.numpy().astype(np.float64) / 255  # equal-size images: pooled == per image
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), atol=1e-12)


def test_statistics_of_a_cache_never_copy_it_as_float():
    """The peak memory of mean/std over a 188 MiB uint8 cache, in a fresh process: the old code
    made float64 copies of the whole cache (8 bytes per pixel, two at once: 16 times the cache,
    3 GiB here); chunked integer sums stay within a few tens of MiB, whatever the cache."""
    code = """
import resource, torch
from resnetlab.data.sources import Split
from resnetlab.data.stats import channel_stats
n = 3072
x = torch.randint(0, 256, (n, 3, 146, 146), dtype=torch.uint8)
split = Split(labels=torch.zeros(n, dtype=torch.long), images=x)
channel_stats([split.subset(torch.arange(4))], 3)  # warmed up on 4 images, not the peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mean, std = channel_stats([split], 3)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, x.numel() / 2**20)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    grew_mib, cache_mib = map(float, p.stdout.split())
    assert cache_mib > 180
    assert grew_mib < 0.5 * cache_mib, (grew_mib, cache_mib)


@pytest.fixture
def photos(tmp_path):
    """A folder of 3 classes, 12 images each, of two sizes, one of them truncated."""
    root = make_folder(tmp_path / "photos", {"a": 12, "b": 12, "c": 12}, size=(48, 40))
    for k in range(4):
        Image.new("RGB", (96, 40), (10 * k, 200, 30)).save(root / "b" / f"wide_{k}.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    (root / "c" / "cut.jpg").write_bytes(buf.getvalue()[:400])
    return root


def _count_decodes(monkeypatch) -> dict:
    counts: dict = {}
    real = decode_module.open_image

    def counting(path, *args, **kwargs):
        counts[str(path)] = counts.get(str(path), 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode_module, "open_image", counting)
    return counts


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_each_file_is_decoded_once_before_training(photos, monkeypatch, cache):
    counts = _count_decodes(monkeypatch)
    pipe = build_pipeline(
        DataConfig(data=str(photos), max_bad_fraction=0.1, cache=cache),
        size_from_data=True,
        progress=False,
    )
    pipe.prepare()  # what training does before its first step
    files = [p for p in photos.rglob("*") if p.is_file()]
    readable = [str(p) for p in files if p.name != "cut.jpg"]
    assert set(readable) <= set(counts) and set(counts.values()) == {1}
    for name in ("train", "val", "test"):
        pipe.loader(name, train=name == "train")  # no loader decodes a file again
    assert set(counts.values()) == {1}
    assert [b.path.rsplit("/", 1)[1] for b in pipe.source.bad_files] == ["cut.jpg"]
    assert sum(len(s) for s in pipe.source.splits.values()) == len(files) - 1
    assert all(s.in_memory == (cache == "auto") for s in pipe.source.splits.values())
    # The statistics: each training image at the training resolution, weighing the same.
    geometry = cache_geometry(pipe.preset, pipe.input_size)
    ref = stats_from_moments(
        np.concatenate(
            [_reference(geometry(open_image(p))[None]) for p in pipe.source.splits["train"].paths]
        )
    )
    np.testing.assert_allclose(pipe.mean, ref[0], atol=1e-12)
    np.testing.assert_allclose(pipe.std, ref[1], atol=1e-12)


def test_the_splits_are_the_same_checked_now_or_once_by_the_pipeline(photos):
    checked = load_source(str(photos), max_bad_fraction=0.1)
    pipe = build_pipeline(DataConfig(data=str(photos), max_bad_fraction=0.1), progress=False)
    pipe.prepare()
    for name, split in checked.splits.items():
        assert [str(p) for p in split.paths] == [str(p) for p in pipe.source.splits[name].paths]
        assert torch.equal(split.labels, pipe.source.splits[name].labels)
    assert [b.path for b in checked.bad_files] == [b.path for b in pipe.source.bad_files]


def test_the_cache_is_filled_in_place_and_the_gaps_of_unreadable_files_closed(photos):
    pipe = build_pipeline(DataConfig(data=str(photos), max_bad_fraction=0.1), progress=False)
    pipe.prepare()
    geometry = cache_geometry(pipe.preset, pipe.input_size)
    for name, split in pipe.source.splits.items():
        assert split.in_memory and len(split.images) == len(split.paths)
        if name == "train":
            for path, image in zip(split.paths, split.images):
                assert torch.equal(image, geometry(open_image(path)))


def test_the_cache_limit_holds_for_all_splits_together(photos, monkeypatch):
    import resnetlab.data.pipeline as pipeline

    pipe = build_pipeline(DataConfig(data=str(photos), max_bad_fraction=0.1), progress=False)
    side = pipeline.cache_size(pipe.preset, pipe.input_size)
    train_bytes = len(pipe.source.splits["train"]) * 3 * side * side
    # Room for the training split alone (and the temporaries): the others are left on disk.
    monkeypatch.setattr(pipeline, "MEMORY_CACHE_BYTES", pipeline.TEMPORARY_BYTES + train_bytes)
    pipe = build_pipeline(DataConfig(data=str(photos), max_bad_fraction=0.1), progress=False)
    pipe.prepare()
    assert pipe.source.splits["train"].in_memory
    assert not pipe.source.splits["val"].in_memory and not pipe.source.splits["test"].in_memory
    assert pipe.source.splits["val"].checked and pipe.source.splits["test"].checked


def test_decoding_prints_progress_lines_where_stderr_is_a_log(photos, tmp_path):
    """stderr to a file (a log, CI, nohup): plain lines with the count, the rate and the time
    left, every RESNETLAB_PROGRESS_SECONDS (0 here: at every image)."""
    log = tmp_path / "stderr.log"
    code = (
        "from resnetlab.data import DataConfig, build_pipeline\n"
        f"build_pipeline(DataConfig(data={str(photos)!r}, max_bad_fraction=0.1)).prepare()\n"
    )
    with open(log, "w") as err:
        p = subprocess.run(
            [sys.executable, "-c", code],
            stderr=err,
            timeout=300,
            env={**_env(), "RESNETLAB_PROGRESS_SECONDS": "0"},
        )
    assert p.returncode == 0, log.read_text()
    text = log.read_text()
    assert "decoding train images into memory at" in text
    lines = [line for line in text.splitlines() if line.startswith("decoding train images")]
    assert len(lines) > 3 and "images/s" in lines[-1] and "ETA" in lines[-1]
    assert "\r" not in text  # no bar in a log


def test_stats_reads_each_file_once_and_reports_the_resolution(photos, monkeypatch, capsys):
    from resnetlab.cli.commands import main

    counts = _count_decodes(monkeypatch)
    assert main(["stats", str(photos), "--json"]) == 1  # the truncated file
    report = json.loads(capsys.readouterr().out)
    assert set(counts.values()) == {1} and len(counts) >= 40  # cut.jpg: maybe by its header
    assert report["stats_at"]["split"] == "train" and report["stats_at"]["size"] == [40, 40]
    assert [b["path"].rsplit("/", 1)[1] for b in report["bad_files"]] == ["cut.jpg"]


def _env() -> dict:
    import os

    return dict(os.environ)
