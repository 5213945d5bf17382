"""Where the model looked: Grad-CAM heat maps (Selvaraju et al. 2017, arXiv:1610.02391).

The attribution itself is Captum's ``LayerGradCam`` on the feature map that ``forward_pooled``
pools (the output of ``layer4`` in the ImageNet family, of ``layer3`` in the CIFAR family, after
the final BN-ReLU in pre-activation nets), upsampled to the input with
``LayerAttribution.interpolate``. This module only picks the
layer, feeds the model its own preprocessing and draws the result.

- :func:`explain`: normalised batch -> heat maps (N, H, W) in [0, 1], any resnetlab model.
- :class:`Explainer`: a model with its preprocessing and classes, for PIL images or uint8
  tensors (what ``serve`` and ``report`` hold).
- :func:`explain_files`: image files -> one overlay PNG each, one row per file (``explain``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..core.errors import ConfigError
from ..core.optional import require
from ..data.images import ImageDecodeError, from_pil, open_image
from ..data.transforms import BatchTransform, file_transform, stack_images
from ..tasks import task_of

# Overlays of small inputs (CIFAR's 32 px, digits' 8 px) are scaled up to at least this side,
# so the heat can be seen; 224 is the size ImageNet models see.
OVERLAY_MIN_SIDE = 224
# Half image, half colour: the blend of the Grad-CAM paper's figures and of the `grad-cam`
# package's show_cam_on_image, so overlays look as users of either expect.
OVERLAY_ALPHA = 0.5
# Perceptually ordered rainbow (blue = no evidence, red = most); jet's look without its bands.
OVERLAY_CMAP = "turbo"
SUFFIX = ".gradcam"
# Characters a file name cannot hold on one of the common file systems.
_UNSAFE = re.compile(r'[\x00-\x1f/\\:*?"<>|]')


def target_layer(model: nn.Module) -> tuple[nn.Module, bool]:
    """Where the feature map that ``forward_pooled`` pools can be caught: ``(module,
    True)`` for the pool's input, ``(module, False)`` for a stage's output.

    The pool's input is the last stage's output (``layer4``, CIFAR's ``layer3``) and, in a
    pre-activation net, that output after its final BN-ReLU: what the head really sees.
    Models without ``avgpool`` fall back to the last of their ``stage_names``. Wrappers
    (``torch.compile``, DDP) are looked through."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return target_layer(inner)
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        return pool, True
    stages = getattr(model, "stage_names", None)
    if stages:
        return model.get_submodule(stages[-1]), False
    raise ConfigError(
        f"cannot find the feature map of {type(model).__name__} for Grad-CAM; pass layer=MODULE"
    )


def _captum():
    attr = require("captum.attr", "explanations (Grad-CAM)")
    return attr.LayerGradCam, attr.LayerAttribution


def _targets(target: int | Sequence[int] | torch.Tensor, n: int, num_classes: int) -> list[int]:
    if isinstance(target, torch.Tensor):
        target = target.flatten().tolist()
    targets = [target] * n if isinstance(target, int) else [int(t) for t in target]
    if len(targets) != n:
        raise ConfigError(f"{len(targets)} targets for {n} images; give one per image")
    for t in targets:
        if not 0 <= t < num_classes:
            raise ConfigError(f"target class {t} is out of range for {num_classes} classes")
    return targets


def explain(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM heat maps (N, H, W) in [0, 1] for a normalised batch (N, C, H, W).

    ``target``: the class to explain, one for all images or one per image; None explains
    each image's predicted class. ``layer``: a module whose output to explain instead of
    the pooled feature map (:func:`target_layer`). Each map is divided by its own maximum,
    so 1 is where the evidence for the class is strongest; an image with no positive
    evidence is all 0. The model runs in eval mode (and is put back as it was) on its own
    device."""
    if images.ndim != 4:
        raise ConfigError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    layer_gradcam, layer_attribution = _captum()
    layer, layer_input = (layer, False) if layer is not None else target_layer(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm must not learn from the images it explains
    try:
        # Gradients are needed even when the caller is under no_grad or inference_mode;
        # the clone is an ordinary tensor even if ``images`` was made in inference mode.
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().to(device, torch.float32).clone()
            with torch.no_grad():  # the predicted classes, or just the number of classes
                out = model(x if target is None else x[:1])
            targets = _targets(out.argmax(1) if target is None else target, len(x), out.shape[1])
            # ReLU on the weighted sum: Grad-CAM keeps only evidence *for* the class (eq. 2).
            cam = layer_gradcam(model, layer).attribute(
                x, target=targets, attribute_to_layer_input=layer_input, relu_attributions=True
            )
            cam = layer_attribution.interpolate(cam.detach(), x.shape[-2:], "bilinear")
    finally:
        model.train(was_training)
    cam = cam[:, 0].float().clamp_(min=0)
    peak = cam.flatten(1).amax(1).clamp(min=torch.finfo(cam.dtype).tiny)
    return (cam / peak.view(-1, 1, 1)).cpu()


def _rgb(image: np.ndarray | torch.Tensor | Image.Image) -> np.ndarray:
    """Any image (PIL, HWC/HW array, CHW tensor) as an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        a = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        a = image.detach().cpu().numpy()
        a = a.transpose(1, 2, 0) if a.ndim == 3 else a  # CHW -> HWC
    else:
        a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ConfigError(f"overlay needs an 8-bit image (H, W[, 1|3]), got {a.dtype} {a.shape}")
    return a


def overlay(
    image: np.ndarray | torch.Tensor | Image.Image,
    heatmap: np.ndarray | torch.Tensor,
    alpha: float = OVERLAY_ALPHA,
    cmap: str = OVERLAY_CMAP,
    min_side: int = OVERLAY_MIN_SIDE,
) -> Image.Image:
    """The heat map coloured with ``cmap`` and blended over ``image`` (RGB PIL image).

    ``image`` is what the model saw (its input size, uint8); both are scaled up together
    until the shorter side is at least ``min_side``: the image with nearest neighbours (its
    pixels stay visible), the heat bilinearly (it is a smooth quantity)."""
    from ..core.plots import heatmap_overlay

    rgb = _rgb(image)
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    h, w = rgb.shape[:2]
    if heat.shape != (h, w):
        raise ConfigError(f"heat map {tuple(heat.shape)} and image {(h, w)} differ in size")
    scale = max(1, -(-min_side // min(h, w)))  # ceil: at least min_side
    if scale > 1:
        h, w = h * scale, w * scale
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.NEAREST))
        heat = F.interpolate(heat[None, None], size=(h, w), mode="bilinear")[0, 0]
    return Image.fromarray(heatmap_overlay(rgb, heat.clamp(0, 1).numpy(), alpha, cmap))


def overlay_png(image, heatmap, **kwargs: Any) -> bytes:
    """:func:`overlay` encoded as PNG (for an HTTP response or an HTML data URL)."""
    import io

    buf = io.BytesIO()
    overlay(image, heatmap, **kwargs).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Explanation:
    """One image explained: what the model saw, the heat map and the class it explains."""

    image: torch.Tensor  # uint8 (C, H, W) at the model's input size
    heatmap: torch.Tensor  # float (H, W) in [0, 1]
    index: int  # the explained class
    label: str
    prob: float  # the model's probability for that class (calibrated when the model is)

    def overlay(self, **kwargs: Any) -> Image.Image:
        return overlay(self.image, self.heatmap, **kwargs)

    def png(self, **kwargs: Any) -> bytes:
        return overlay_png(self.image, self.heatmap, **kwargs)


class Explainer:
    """A trained model with its own preprocessing and classes, ready to explain images.

    ``Explainer.from_loaded(load_model(run))`` takes everything from the model's metadata;
    the constructor takes the pieces, so any model and preprocessing can be explained."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        preset: str = "imagenet",
        in_chans: int = 3,
        temperature: float | None = None,
        device: str | torch.device | None = None,
        multilabel: bool = False,
        resize_size: int | None = None,
        interpolation: str | None = None,
    ) -> None:
        """``multilabel``: probabilities are each logit's sigmoid (the default target is
        still the most probable label). ``resize_size``, ``interpolation``: the evaluation
        resize of the model's weights (``ModelMeta``), as ``predict`` applies it."""
        self.multilabel = multilabel
        # Explaining is inference: BatchNorm uses its running statistics.
        self.model = (model.to(device) if device is not None else model).eval()
        self.classes = [str(c) for c in classes]
        self.in_chans = int(in_chans)
        self.temperature = float(temperature) if temperature else 1.0
        self.device = next(self.model.parameters()).device
        self._lock = threading.Lock()
        # The evaluation transform of training and `predict`: decode-side resize/crop to a
        # uint8 image (shown under the heat), then the batch-side normalisation.
        self._to_input = file_transform(
            preset,
            int(input_size),
            train=False,
            resize_size=resize_size,
            interpolation=interpolation,
        )
        self._normalise = BatchTransform(
            preset, int(input_size), mean, std, train=False, geometric=False, channels_last=False
        )

    @classmethod
    def from_loaded(cls, loaded: Any, device: str | torch.device | None = None) -> Explainer:
        """From what ``bundle.load_model`` returns (``.model`` and its ``.meta``)."""
        meta = loaded.meta
        return cls(
            loaded.model,
            meta.classes,
            meta.size,
            meta.mean,
            meta.std,
            meta.preset,
            meta.in_chans,
            getattr(meta, "temperature", None),
            device,
            getattr(meta, "multilabel", False),
            getattr(meta, "resize_size", None),
            getattr(meta, "interpolation", None),
        )

    def class_index(self, name: str) -> int:
        """The index of class ``name``; an unknown name is a ConfigError listing the classes."""
        if name in self.classes:
            return self.classes.index(name)
        shown = ", ".join(self.classes[:30])
        more = f" … ({len(self.classes)} in all)" if len(self.classes) > 30 else ""
        raise ConfigError(f"--class {name!r} is not a class of this model; it has: {shown}{more}")

    def prepare(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A decoded image (PIL, or a uint8 (C, H, W) tensor) -> uint8 (C, H, W) model input."""
        if isinstance(image, torch.Tensor):
            a = image.detach().cpu().numpy().transpose(1, 2, 0)
            image = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        image = from_pil(image, self.in_chans)  # EXIF orientation and alpha as a file's
        return self._to_input(image)

    def explain_batch(
        self, batch: torch.Tensor, target: int | Sequence[int] | None = None
    ) -> list[Explanation]:
        """Batch (N, C, H, W) of prepared images -> one Explanation each: uint8, or float
        0..255 (a float image resized in floating point, as ``predict`` feeds it: explained
        unrounded, shown rounded)."""
        x = self._normalise(batch.to(self.device))
        if batch.is_floating_point():
            batch = batch.round().clamp(0, 255).to(torch.uint8)
        # Captum hooks the layer for the length of a call: one call at a time (serve's
        # request handlers share one Explainer).
        with self._lock:
            with torch.no_grad():
                logits = self.model(x).float()
            targets = logits.argmax(1).tolist() if target is None else target
            heat = explain(self.model, x, targets)
        probs = task_of(self.multilabel).probabilities(logits.float(), self.temperature).cpu()
        chosen = _targets(targets, len(x), probs.shape[1])
        return [
            Explanation(img, h, t, self.classes[t], float(p[t]))
            for img, h, t, p in zip(batch.cpu(), heat, chosen, probs)
        ]

    def explain_image(
        self, image: Image.Image | torch.Tensor, class_name: str | None = None
    ) -> Explanation:
        """One decoded image, for its predicted class or the class named ``class_name``."""
        target = None if class_name is None else self.class_index(class_name)
        return self.explain_batch(self.prepare(image)[None], target)[0]


def _out_name(stem: str, class_name: str | None) -> str:
    tag = "" if class_name is None else "-" + _UNSAFE.sub("_", class_name)
    return f"{stem}{SUFFIX}{tag}.png"


def output_paths(
    paths: Sequence[str | os.PathLike], out_dir: Path, class_name: str | None = None
) -> list[Path]:
    """Where each image's overlay goes: ``OUT/<stem>.gradcam[-<class>].png``.

    Images of one name in several folders (``cat/001.jpg``, ``dog/001.jpg``: the ImageFolder
    layout) are told apart by their folder, ``cat_001.gradcam.png``; any name still taken
    gets ``-2``, ``-3`` … An input image is never overwritten (explaining the overlays of an
    earlier call into the same folder is allowed)."""
    stems = [Path(p).stem for p in paths]
    shared = {s for s in stems if stems.count(s) > 1}
    inputs = {os.path.abspath(p) for p in paths}
    taken: set[str] = set()
    out = []
    for p, stem in zip(paths, stems):
        parent = Path(os.path.abspath(p)).parent.name
        if stem in shared and parent:
            stem = f"{parent}_{stem}"
        name = _out_name(stem, class_name)
        candidate, n = out_dir / name, 1
        while os.path.abspath(candidate) in inputs | taken:
            n += 1
            candidate = out_dir / f"{name[: -len('.png')]}-{n}.png"
        taken.add(os.path.abspath(candidate))
        out.append(candidate)
    return out


def explain_files(
    loaded: Any,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    class_name: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    explainer: Explainer | None = None,
) -> list[dict]:
    """Grad-CAM overlays for image files, one PNG each in ``out_dir``; one row per file.

    ``loaded``: what ``bundle.load_model`` returns (ignored when ``explainer`` is given).
    Rows, in input order: ``{"path", "class", "index", "prob", "out", "error"}``; a file that
    cannot be decoded gets its reason in ``error`` and no PNG, the others go on."""
    ex = explainer or Explainer.from_loaded(loaded, device)
    target = None if class_name is None else ex.class_index(class_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dests = output_paths(paths, out, class_name)
    rows: list[dict] = []
    # Decoded a batch at a time, so a long list of photos never sits in memory at once.
    for start in range(0, len(paths), batch_size):
        chunk = []
        for p, dest in zip(paths[start : start + batch_size], dests[start : start + batch_size]):
            row = {
                "path": str(p),
                "class": None,
                "index": None,
                "prob": None,
                "out": None,
                "error": None,
            }
            rows.append(row)
            try:
                chunk.append((row, dest, ex.prepare(open_image(p, ex.in_chans))))
            except ImageDecodeError as exc:
                row["error"] = exc.reason
        if not chunk:
            continue
        batch = stack_images([image for _, _, image in chunk])
        for (row, dest, _), e in zip(chunk, ex.explain_batch(batch, target)):
            e.overlay().save(dest, format="PNG")
            row.update({"class": e.label, "index": e.index, "prob": e.prob, "out": str(dest)})
    return rows
