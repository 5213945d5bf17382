"""Augmentation presets, per sample (torchvision.transforms.v2, for files) and per batch.

Per-batch augmentation works on uint8 batches already on the training device, so for data held
in memory the 2 CPU cores never decode or augment image by image. Randomness comes from an
explicit generator, seeded per (run seed, epoch, batch): a resumed run sees the same batches.

torchvision is imported only where a training transform needs it: importing it costs about
2.5 s here (it loads torch._dynamo), which `predict`, `serve` and `models` do not need to pay.
The evaluation transform computes the same numbers as torchvision's with torch alone.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..core.errors import ConfigError

PRESETS = ("imagenet", "cifar", "small")
AUTO_AUGMENTS = ("none", "trivial", "randaugment")
# Resize-then-center-crop ratio of the ImageNet evaluation protocol (256 -> 224).
CROP_PCT = 0.875


# Images whose median shorter side is at most this many pixels (CIFAR's 32, Tiny ImageNet's
# 64, STL-10's 96) are trained near their own size; bigger ones are photos, cropped to 224.
SMALL_IMAGE_SIDE = 128


def default_preset(kind: str) -> str:
    return {"digits": "small", "mnist": "small", "cifar10": "cifar", "cifar100": "cifar"}.get(
        kind, "imagenet"
    )


def size_from_images(sizes: Sequence[tuple[int, int]], channels: int) -> tuple[str, int, int]:
    """(preset, input size, median side) for a model trained from scratch on images of these
    (h, w) sizes: small images at their median shorter side rounded to a multiple of 8, with
    the CIFAR preset (pad-and-crop, flip; greyscale: the small preset, no flip); photos at 224
    with the ImageNet preset (random resized crops). Upsampling 32-pixel images to 224 costs
    about 50 times the compute and learns nothing more."""
    side = int(np.median([min(h, w) for h, w in sizes])) if len(sizes) else 0
    if not side or side > SMALL_IMAGE_SIDE:
        return "imagenet", 224, side
    return ("small" if channels == 1 else "cifar"), max(8, int(side / 8 + 0.5) * 8), side


def eval_resize_size(input_size: int) -> int:
    return int(math.floor(input_size / CROP_PCT))


def _auto_augment(name: str | None) -> list:
    if name in (None, "none"):
        return []
    from torchvision.transforms import v2

    if name == "trivial":
        return [v2.TrivialAugmentWide()]
    if name == "randaugment":
        return [v2.RandAugment()]
    raise ConfigError(f"auto_augment={name!r} is not one of {', '.join(AUTO_AUGMENTS)}")


def file_transform(
    preset: str,
    input_size: int,
    train: bool,
    auto_augment: str | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
):
    """PIL image -> uint8 (C, input_size, input_size) tensor; normalisation happens per batch.
    ``resize_size`` and ``interpolation``: the evaluation resize the weights ask for (default
    256/224 of the size, bilinear)."""
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is not one of {', '.join(PRESETS)}")
    if not train:
        mode = eval_interpolation(interpolation)
        if preset == "imagenet":
            short = resize_size or eval_resize_size(input_size)
            return EvalTransform(input_size, resize_short_side=short, interpolation=mode)
        return EvalTransform(input_size, interpolation=mode)
    from torchvision.transforms import v2

    ops: list = [v2.ToImage()]
    if preset == "imagenet":
        ops += [v2.RandomResizedCrop(input_size), v2.RandomHorizontalFlip()]
    elif preset == "cifar":
        ops += [
            v2.Resize((input_size, input_size)),
            v2.RandomCrop(input_size, padding=input_size // 8),
            v2.RandomHorizontalFlip(),
        ]
    else:
        ops += [
            v2.Resize((input_size, input_size)),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        ]
    return v2.Compose(ops + _auto_augment(auto_augment))


def eval_interpolation(name: str | None) -> str:
    """The evaluation resize's kernel for the name weights give (torchvision's and timm's
    names): bilinear or bicubic; others (nearest, lanczos, random...) resize bilinearly."""
    name = (name or "bilinear").lower().rpartition(".")[2]
    return name if name in ("bilinear", "bicubic") else "bilinear"


# Pillow's kernels for the evaluation resize (antialiased when shrinking).
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class EvalTransform:
    """PIL image -> uint8 (C, size, size): the shorter side resized to ``resize_short_side``
    (the longer one follows, rounded down) and the center ``size`` square cut out (ImageNet
    evaluation), or both sides resized to ``size``. Bilinear (or ``interpolation="bicubic"``,
    as some weights were published), by Pillow's own ``Image.resize``: the numbers of the
    tutorials' torchvision pipeline ``Compose([Resize(...), CenterCrop(size), ToTensor()])``
    on a PIL image and of a client with Pillow alone, byte for byte and on every CPU (tests
    hold both equal). Every door into a model (predict, serve, evaluate, the evaluation in
    training, an image given in memory) goes through this one transform."""

    def __init__(
        self, size: int, resize_short_side: int | None = None, interpolation: str = "bilinear"
    ) -> None:
        self.size, self.short_side = size, resize_short_side
        self.interpolation = interpolation

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize, before the crop."""
        if self.short_side is None:
            return self.size, self.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.short_side, int(self.short_side * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(img, np.ndarray):  # (H, W[, C]) uint8: a JPEG of a shard, decoded fast
            img = Image.fromarray(img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img)
        w, h = img.size
        new_w, new_h = self.resized_size(w, h)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), PIL_FILTERS[self.interpolation])
        a = np.array(img, dtype=np.uint8)  # a copy, (H, W) or (H, W, C)
        if a.ndim == 2:
            a = a[:, :, None]
        x = torch.from_numpy(a).permute(2, 0, 1)  # (C, H, W), channels-last in memory
        if self.short_side is not None:
            top = int(round((new_h - self.size) / 2.0))
            left = int(round((new_w - self.size) / 2.0))
            x = x[:, top : top + self.size, left : left + self.size]
        return x

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The same for a uint8 (C, H, W) tensor (C = 1 or 3): a batch held in memory at
        its stored size is brought to the input size exactly as a decoded file is."""
        a = np.ascontiguousarray(x.permute(1, 2, 0).cpu().numpy())
        out = self(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a))
        return out.to(x.device)

    def __repr__(self) -> str:
        how = f"short side {self.short_side}, center {self.size}" if self.short_side else ""
        return f"EvalTransform({how or f'{self.size}x{self.size}'}, {self.interpolation})"


def resize_uint8(
    x: torch.Tensor, height: int, width: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 (C, H, W) image, kept in uint8 where torch has
    a native uint8 kernel for this CPU (AVX2/AVX-512 or Arm), else through float and rounded.
    ``bicubic`` likewise (through float it is clamped first: it overshoots), as torchvision."""
    c, h, w = x.shape
    x = x.unsqueeze(0)
    if x.is_contiguous(memory_format=torch.channels_last) and x.numel() != x.stride(0):
        # Give the single image a batch stride, so interpolate keeps the channels-last
        # layout (its fast uint8 path) instead of allocating a contiguous output.
        x = x.as_strided((1, c, h, w), (x.numel(), *x.stride()[1:]))
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or (
        platform.machine() in ("aarch64", "arm64")
    )
    if x.device.type == "cpu" and native:
        out = F.interpolate(x, size=[height, width], mode=interpolation, antialias=True)
    else:
        out = F.interpolate(x.float(), size=[height, width], mode=interpolation, antialias=True)
        if interpolation == "bicubic":
            out = out.clamp_(0, 255)
        out = out.round_().to(torch.uint8)
    return out[0]


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 (C, H, W) images of one size -> a channels-last (N, C, H, W) batch.

    Decoded images are (H, W, C) in memory; copying each into a channels-last batch moves
    whole rows, where ``torch.stack`` (a contiguous NCHW batch) transposes every pixel."""
    first = images[0]
    batch = torch.empty(
        (len(images), *first.shape), dtype=first.dtype, memory_format=torch.channels_last
    )
    for slot, img in zip(batch, images):
        slot.copy_(img)
    return batch


def auto_augment_batch(x: torch.Tensor, name: str | None) -> torch.Tensor:
    """Apply TrivialAugment / RandAugment image by image to a uint8 batch (CPU)."""
    ops = _auto_augment(name)
    if not ops:
        return x
    return torch.stack([ops[0](img) for img in x])


class BatchTransform:
    """uint8 batch -> normalised float batch at ``input_size``, on the batch's device.

    ``geometric=True`` (data held in memory at storage size) also applies the preset's random
    geometry in training; files already had theirs per sample.
    """

    def __init__(
        self,
        preset: str,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        geometric: bool,
        random_erasing: float = 0.0,
        channels_last: bool = True,
        resize_size: int | None = None,
        interpolation: str | None = None,
    ) -> None:
        """``resize_size``, ``interpolation``: the evaluation resize of the model's weights
        (as ``file_transform``), for uint8 batches not yet at the input size."""
        if preset not in PRESETS:
            raise ConfigError(f"preset={preset!r} is not one of {', '.join(PRESETS)}")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"mean {mean} and std {std} must have equal length, std > 0")
        if not 0.0 <= random_erasing <= 1.0:
            raise ConfigError(f"random_erasing must be a probability, got {random_erasing}")
        self.preset, self.input_size, self.train = preset, input_size, train
        self.geometric, self.random_erasing = geometric, random_erasing
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels_last = channels_last
        self.resize_size, self.interpolation = resize_size, interpolation

    def eval_geometry(self) -> EvalTransform:
        """The evaluation resize (and crop) of one image, as ``file_transform`` makes it."""
        mode = eval_interpolation(self.interpolation)
        if self.preset == "imagenet":
            short = self.resize_size or eval_resize_size(self.input_size)
            return EvalTransform(self.input_size, resize_short_side=short, interpolation=mode)
        return EvalTransform(self.input_size, interpolation=mode)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = self.input_size
        random_geometry = self.geometric and self.train
        if (
            not self.train
            and x.dtype == torch.uint8
            and (h, w) != (size, size)
            and (self.geometric or self.preset != "imagenet")
        ):
            # Evaluation of images held in memory at their own size (digits, CIFAR, a cache):
            # resized image by image in uint8 as a decoded file is, so a held-out image scores
            # the same here as through predict. (An ImageNet-preset file batch is already
            # cropped at the input size; only progressive resizing shrinks it, below.)
            geometry = self.eval_geometry()
            x = torch.stack([geometry.tensor(img) for img in x])
            h, w = size, size
        if random_geometry and self.preset == "imagenet" and x.device.type == "cpu":
            # On the CPU, crop and resize in uint8 image by image: torchvision's uint8 resize
            # kernels are several times faster than a float grid_sample over the batch.
            x = self._random_resized_crop_uint8(x, generator)
            random_geometry, h, w = False, size, size
        # A float batch of our own (a float input is copied), 0..255 until normalised in
        # place; every geometric op below is linear.
        x = x.to(torch.float32, copy=x.dtype == torch.float32)
        if random_geometry:
            x = self._random_geometry(x, generator)
        elif self.geometric and self.preset == "imagenet" and (h, w) != (size, size):
            side = eval_resize_size(size)
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            top = (side - size) // 2
            x = x[:, :, top : top + size, top : top + size]
        elif (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=h > size)
        x = self._normalize(x)
        if self.train and self.random_erasing > 0:
            x = self._erase(x, generator)
        # The layout asked for, whatever the input's (onnxruntime reads NCHW memory).
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std as two in-place passes over our own float batch."""
        n, c, h, w = x.shape
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=x.device)
        if c > 1 and x.is_contiguous(memory_format=torch.channels_last):
            # Channels-last: per-channel factors along a row of W * C values, so each pass
            # is vectorised (broadcasting along a last dimension of C is not).
            rows = x.permute(0, 2, 3, 1).view(n * h, w * c)
            rows.mul_(scale.repeat(w)).sub_(shift.repeat(w))
            return x
        x = x.contiguous()
        return x.mul_(scale.view(1, c, 1, 1)).sub_(shift.view(1, c, 1, 1))

    def _random_resized_crop_uint8(self, x: torch.Tensor, g) -> torch.Tensor:
        n, _, h, w = x.shape
        size = self.input_size
        area = (0.08 + 0.92 * self._rand(n, x, g)) * h * w
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self._rand(n, x, g)
        ratio = torch.exp(log_r)
        cw = torch.sqrt(area * ratio).round().clamp(1, w).long()
        ch = torch.sqrt(area / ratio).round().clamp(1, h).long()
        top = ((h - ch + 1) * self._rand(n, x, g)).long().clamp(max=h - 1)
        left = ((w - cw + 1) * self._rand(n, x, g)).long().clamp(max=w - 1)
        flip = self._rand(n, x, g) < 0.5
        out = torch.empty(n, x.shape[1], size, size, dtype=x.dtype)
        for i in range(n):
            t, le = int(top[i]), int(left[i])
            crop = x[i, :, t : t + int(ch[i]), le : le + int(cw[i])]
            img = resize_uint8(crop, size, size)
            out[i] = img.flip(-1) if flip[i] else img
        return out

    def _rand(self, n: int, x: torch.Tensor, g) -> torch.Tensor:
        return torch.rand(n, generator=g, device=g.device if g is not None else x.device).to(
            x.device
        )

    def _random_geometry(self, x: torch.Tensor, g) -> torch.Tensor:
        """One affine warp per image: crop/scale/rotate/flip in a single grid_sample."""
        n, _, h, w = x.shape
        size = self.input_size
        if self.preset == "cifar":
            # Pad-and-crop by up to 1/8 of the side (4 px at 32) + horizontal flip.
            pad = max(1, h // 8)
            xp = F.pad(x, (pad, pad, pad, pad))
            dy = (self._rand(n, x, g) * (2 * pad + 1)).long().clamp_(max=2 * pad)
            dx = (self._rand(n, x, g) * (2 * pad + 1)).long().clamp_(max=2 * pad)
            rows = dy[:, None] + torch.arange(h, device=x.device)
            cols = dx[:, None] + torch.arange(w, device=x.device)
            batch = torch.arange(n, device=x.device)[:, None, None]
            x = xp.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2)
            flip = self._rand(n, x, g) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
            if (h, w) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=h > size)
            return x.contiguous()
        if self.preset == "imagenet":
            # RandomResizedCrop: area 8-100 %, aspect 3/4-4/3 (log-uniform), then flip.
            area = 0.08 + 0.92 * self._rand(n, x, g)
            log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self._rand(n, x, g)
            ratio = torch.exp(log_r)
            sw = torch.sqrt(area * ratio).clamp(max=1.0)
            sh = torch.sqrt(area / ratio).clamp(max=1.0)
            tx = (1 - sw) * (2 * self._rand(n, x, g) - 1)
            ty = (1 - sh) * (2 * self._rand(n, x, g) - 1)
            sign = torch.where(self._rand(n, x, g) < 0.5, -1.0, 1.0)
            theta = torch.zeros(n, 2, 3, device=x.device)
            theta[:, 0, 0], theta[:, 0, 2] = sw * sign, tx
            theta[:, 1, 1], theta[:, 1, 2] = sh, ty
        else:
            # small: +-10 degrees, +-10 % shift, 0.9-1.1 zoom; no flip (digits are not symmetric).
            angle = (2 * self._rand(n, x, g) - 1) * math.radians(10)
            scale = 1 / (0.9 + 0.2 * self._rand(n, x, g))
            tx = (2 * self._rand(n, x, g) - 1) * 0.2
            ty = (2 * self._rand(n, x, g) - 1) * 0.2
            cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
            theta = torch.stack(
                [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
            )
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        if h > 2 * size:  # shrinking a lot: low-pass first so the warp does not alias
            x = F.interpolate(x, size=(2 * size, 2 * size), mode="bilinear", antialias=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _erase(self, x: torch.Tensor, g) -> torch.Tensor:
        """Random erasing (Zhong et al., arXiv:1708.04896): one rectangle of 2-33 % area set to
        0 (the data set's mean after normalisation) in a fraction of the images."""
        n, _, h, w = x.shape
        apply = self._rand(n, x, g) < self.random_erasing
        area = (0.02 + 0.31 * self._rand(n, x, g)) * h * w
        ratio = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * self._rand(n, x, g))
        eh = torch.sqrt(area * ratio).clamp(1, h)
        ew = torch.sqrt(area / ratio).clamp(1, w)
        top = (h - eh) * self._rand(n, x, g)
        left = (w - ew) * self._rand(n, x, g)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + ew).view(n, 1, 1))
            & apply.view(n, 1, 1)
        )
        return x.masked_fill(inside.unsqueeze(1), 0.0)
