"""Batches: reproducible, resumable, sharded, and the last-batch-of-1 rule."""

import pytest
import torch

from datagen import make_folder
from resnetlab.data import DataConfig, build_pipeline
from resnetlab.data.loader import EpochSampler
from resnetlab.data.transforms import BatchTransform, stack_images


def test_sampler_drop_last_and_eval_covers_all():
    train = EpochSampler(129, 16, shuffle=True, drop_last=True, seed=0)
    assert len(train) == 8 and all(len(b) == 16 for b in train)
    ev = EpochSampler(129, 16, shuffle=False, drop_last=False)
    batches = list(ev)
    assert len(batches) == 9 and batches[-1] == [128]
    assert sorted(i for b in batches for i in b) == list(range(129))


def test_sampler_seeded_and_resumable():
    a = EpochSampler(100, 10, shuffle=True, drop_last=True, seed=5)
    b = EpochSampler(100, 10, shuffle=True, drop_last=True, seed=5)
    a.set_epoch(3)
    b.set_epoch(3, start_batch=4)
    assert list(a)[4:] == list(b)
    a.set_epoch(4)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_shards_for_ddp():
    shards = [
        EpochSampler(50, 4, shuffle=True, drop_last=False, seed=1, rank=r, world_size=2)
        for r in range(2)
    ]
    seen = [sorted(i for b in s for i in b) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 25
    assert set(seen[0]) | set(seen[1]) == set(range(50))
    assert len(shards[0]) == len(shards[1])


def _batches(pipe, split="train", epochs=(0, 1)):
    ld = pipe.loader(split, train=True)
    tf = pipe.batch_transform(train=True, geometric=ld.geometric)
    out = []
    for e in epochs:
        ld.sampler.set_epoch(e)
        for b, (x, y) in enumerate(ld):
            g = torch.Generator().manual_seed(1000 * e + b)
            out.append((tf(x, g), y))
    return out


def test_in_memory_pipeline_is_reproducible():
    cfg = DataConfig(batch_size=64, random_erasing=0.5)
    a = _batches(build_pipeline(cfg, seed=7))
    b = _batches(build_pipeline(cfg, seed=7))
    assert len(a) == 2 * (1259 // 64)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (64, 1, 32, 32)
        assert xa.is_contiguous(memory_format=torch.channels_last)


def test_digits_augmentation_varies_per_sample():
    pipe = build_pipeline(DataConfig(batch_size=8))
    x = pipe.source.splits["train"].images[:1].expand(8, -1, -1, -1)
    tf = pipe.batch_transform(train=True, geometric=True)
    out = tf(x, torch.Generator().manual_seed(0))
    assert not torch.equal(out[0], out[1])
    ev = pipe.batch_transform(train=False, geometric=True)(x)
    assert torch.equal(ev[0], ev[7])


@pytest.mark.parametrize("preset", ["imagenet", "cifar", "small"])
def test_batch_transform_shapes(preset):
    x = torch.randint(0, 256, (5, 3, 40, 36), dtype=torch.uint8)
    for train in (True, False):
        tf = BatchTransform(preset, 32, (0.5,) * 3, (0.25,) * 3, train, True, 0.5)
        y = tf(x, torch.Generator().manual_seed(1))
        assert y.shape == (5, 3, 32, 32) and torch.isfinite(y).all()


def test_channels_last_batches_normalise_as_contiguous_ones():
    # Decoded images are (H, W, C) in memory; predict and serve stack them channels-last.
    hwc = [torch.randint(0, 256, (30, 28, 3), dtype=torch.uint8) for _ in range(4)]
    images = [im.permute(2, 0, 1)[:, 1:25, 2:26] for im in hwc]  # center crops, as decoded
    batch = stack_images(images)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack(images))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for preset, size in (("imagenet", 24), ("small", 20)):
        tf = BatchTransform(preset, size, mean, std, train=False, geometric=False)
        expected = tf(torch.stack(images))
        assert torch.equal(tf(batch), expected)
        assert tf(batch).is_contiguous(memory_format=torch.channels_last)
        nchw = BatchTransform(preset, size, mean, std, False, False, channels_last=False)
        assert nchw(batch).is_contiguous() and torch.equal(nchw(batch), expected)
        want = (torch.stack(images).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / (
            torch.tensor(std).view(1, 3, 1, 1)
        )
        if size == 24:
            torch.testing.assert_close(expected, want)
    floats = torch.stack(images).float()
    before = floats.clone()
    BatchTransform("imagenet", 24, mean, std, train=False, geometric=False)(floats)
    assert torch.equal(floats, before)  # the caller's float batch is left as it was


def test_cifar_crop_is_a_shift():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    x = (x % 251).to(torch.uint8).expand(4, 3, 32, 32)
    tf = BatchTransform("cifar", 32, (0,) * 3, (1 / 255,) * 3, True, True)
    y = tf(x, torch.Generator().manual_seed(3))
    # Every output pixel is an input pixel or zero padding: the crop never interpolates.
    assert set(y.round().unique().tolist()) <= set(range(251))


@pytest.mark.parametrize("path", ["uint8 crops (CPU)", "one affine warp (GPU)"])
def test_imagenet_random_crop_keeps_up_and_down_and_flips_left_right(path):
    # Dark at the top, bright at the bottom; the left half marked in another channel.
    h, w = 96, 128
    x = torch.zeros(32, 3, h, w, dtype=torch.uint8)
    x[:, 0] = torch.linspace(0, 255, h).to(torch.uint8).view(h, 1)
    x[:, 1, :, : w // 2] = 255
    tf = BatchTransform("imagenet", 32, (0,) * 3, (1 / 255,) * 3, True, True)
    g = torch.Generator().manual_seed(0)
    # The GPU path warps the whole batch at once; run it here on the CPU.
    y = tf(x, g) if path.startswith("uint8") else tf._random_geometry(x.float(), g)
    assert y.shape == (32, 3, 32, 32)
    red, green = y[:, 0], y[:, 1]
    assert (red[:, -1].mean(1) > red[:, 0].mean(1)).all()  # never upside down
    whole_left = green[:, :, :16].mean((1, 2)) - green[:, :, 16:].mean((1, 2))
    marked_left = (whole_left > 1).sum().item()
    marked_right = (whole_left < -1).sum().item()
    assert marked_left > 3 and marked_right > 3  # both orientations occur


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_folder_pipeline_workers_give_identical_batches(tmp_path, cache):
    make_folder(tmp_path, {"a": 12, "b": 12})
    batches = []
    for workers in (0, 2):
        cfg = DataConfig(
            data=str(tmp_path), input_size=32, batch_size=8, num_workers=workers, cache=cache
        )
        batches.append(_batches(build_pipeline(cfg, seed=1)))
    assert len(batches[0]) == len(batches[1]) > 0
    for (xa, ya), (xb, yb) in zip(*batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (8, 3, 32, 32)


def test_eval_loader_scores_every_sample(tmp_path):
    make_folder(tmp_path, {"a": 5, "b": 4})
    pipe = build_pipeline(
        DataConfig(data=str(tmp_path), batch_size=4, val_ratio=0.0, test_ratio=0.0, input_size=32),
        seed=0,
    )
    ld = pipe.loader("train", train=False)
    assert sum(len(y) for _, y in ld) == 9
    train = pipe.loader("train", train=True)
    assert all(len(y) == 4 for _, y in train)  # the batch of 1 is dropped in training


def test_bad_config_values():
    from resnetlab.data import DataError

    for kwargs, msg in [
        ({"input_size": 0}, "at least 1"),
        ({"preset": "mnist"}, "--preset"),
        ({"auto_augment": "autoaug"}, "--auto-augment"),
        ({"batch_size": 0}, "--batch-size"),
    ]:
        with pytest.raises(DataError, match=msg):
            build_pipeline(DataConfig(**kwargs))


@pytest.mark.parametrize("preset", ["imagenet", "cifar", "small"])
def test_eval_transform_equals_torchvision(preset):
    """The evaluation transform gives the numbers of torchvision's pipeline on a PIL image
    (the tutorials' Resize, CenterCrop, then to a tensor), byte for byte."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from resnetlab.data.transforms import eval_resize_size, file_transform, resize_uint8

    size = 32 if preset != "imagenet" else 48
    ops = []
    if preset == "imagenet":
        ops += [v2.Resize(eval_resize_size(size)), v2.CenterCrop(size)]
    else:
        ops += [v2.Resize((size, size))]
    ops += [v2.PILToTensor()]
    reference, ours = v2.Compose(ops), file_transform(preset, size, train=False)
    rng = np.random.default_rng(0)
    # Portrait, landscape, square, odd sides, smaller than the target (upscaled), exact size.
    for w, h in [(97, 61), (61, 97), (80, 80), (33, 201), (20, 13), (size, size), (55, 54)]:
        for channels in (3, 1):
            a = rng.integers(0, 256, (h, w, channels) if channels == 3 else (h, w), np.uint8)
            img = Image.fromarray(a)
            expected, got = reference(img), ours(img)
            assert got.dtype == torch.uint8 and got.shape == (channels, size, size)
            assert torch.equal(got, expected.as_subclass(torch.Tensor)), (preset, w, h, channels)
    # The per-batch random crop resizes with the same kernel as torchvision's functional.
    crop = torch.from_numpy(rng.integers(0, 256, (2, 3, 70, 50), np.uint8))[1, :, 5:60, 3:41]
    assert torch.equal(resize_uint8(crop, 24, 24), v2.functional.resize(crop, [24, 24]))


def test_bicubic_evaluation_resize_equals_torchvision():
    """Weights published with a bicubic evaluation resize (timm's) are evaluated with it."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode, v2

    from resnetlab.data.transforms import file_transform

    reference = v2.Compose(
        [
            v2.Resize(54, interpolation=InterpolationMode.BICUBIC),
            v2.CenterCrop(48),
            v2.PILToTensor(),
        ]
    )
    ours = file_transform("imagenet", 48, train=False, resize_size=54, interpolation="bicubic")
    bilinear = file_transform("imagenet", 48, train=False, resize_size=54)
    rng = np.random.default_rng(1)
    for w, h in [(97, 61), (61, 97), (20, 13), (54, 54)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
        expected = reference(img).as_subclass(torch.Tensor)
        assert torch.equal(ours(img), expected), (w, h)
        if (w, h) != (54, 54):  # bilinear differs: the kernel really is bicubic
            assert not torch.equal(bilinear(img), expected)


def test_commands_that_do_not_train_skip_the_torchvision_import():
    """Importing torchvision costs seconds; `predict`, `serve` and `--help` do not need it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from resnetlab.cli.commands import build_parser\n"
        "build_parser()\n"
        "import resnetlab.inference.predict, resnetlab.data\n"
        "from resnetlab.data.transforms import file_transform\n"
        "file_transform('imagenet', 224, train=False)\n"
        "print('torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
