"""Model inspection: parameter counts, MACs, and a per-layer table.

MACs are those of the convolutions and linear layers, counted from their output shapes during
one forward pass; norms, activations and pooling are not counted, the same convention as the
figures in the ResNet papers, torchvision's weight metadata and ``torch.utils.flop_counter``
(a test holds the two counts equal).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    depth: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    input_size: tuple[int, int, int]
    total_params: int
    trainable_params: int
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _mac_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs of ``model(x)`` and MACs per module path (dotted names relative to
    ``model``; a module's count includes its children's)."""
    leaves: dict[str, int] = {}

    def conv_macs(m: nn.Conv2d, _inp, out: torch.Tensor, name: str) -> None:
        per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
        leaves[name] = leaves.get(name, 0) + out.numel() * per_output

    def linear_macs(m: nn.Linear, _inp, out: torch.Tensor, name: str) -> None:
        leaves[name] = leaves.get(name, 0) + out.numel() * m.in_features

    hooks = []
    for name, module in model.named_modules():
        count = (
            conv_macs
            if isinstance(module, nn.modules.conv._ConvNd)
            else linear_macs
            if isinstance(module, nn.Linear)
            else None
        )
        if count is not None:
            hooks.append(module.register_forward_hook(functools.partial(count, name=name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    per_module: dict[str, int] = {}
    for name, macs in leaves.items():
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            per_module[prefix] = per_module.get(prefix, 0) + macs
    return sum(leaves.values()), per_module


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_size`` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        macs, _ = _mac_counts(model, torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    return macs


def model_info(name: str) -> dict:
    """Parameters and MACs of a registered model at its default input size and class count:
    the zoo's table where it has the model (tests recompute every entry), else counted."""
    from . import get_model_entry
    from .registry import ZOO_STATS

    entry = get_model_entry(name)
    params, macs = ZOO_STATS.get(name) or compute_model_stats(name)
    return {
        "model": name,
        "family": entry.family,
        "params": params,
        "macs": macs,
        "input_size": list(entry.input_size),
        "paper": entry.paper,
        "description": entry.description,
    }


def compute_model_stats(name: str) -> tuple[int, int]:
    """(parameters, MACs) of a registered model at its default input size and class count,
    built on the meta device: shapes only, no memory and no initialisation."""
    from . import create_model, get_model_entry

    entry = get_model_entry(name)
    with torch.device("meta"):
        model = create_model(name).eval()
    macs, _ = _mac_counts(model, torch.zeros(1, *entry.input_size, device="meta"))
    return count_params(model), macs


def summarize(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), depth: int = 2
) -> ModelSummary:
    """Per-module rows down to ``depth`` levels of nesting (1: stem, stages and head only)."""
    if len(input_size) != 3 or min(input_size) < 1:
        raise ConfigError(f"input_size must be (C, H, W) with positive sizes, got {input_size}")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth:

            def hook(_m, _inp, out, name=name):
                if isinstance(out, torch.Tensor):
                    shapes[name] = tuple(out.shape)

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size)
        macs, per_module = _mac_counts(model, x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    rows = []
    for name, module in model.named_modules():
        if name in shapes:
            rows.append(
                LayerRow(
                    name=name,
                    type=type(module).__name__,
                    output_shape=shapes[name],
                    params=count_params(module),
                    macs=per_module.get(name, 0),
                    depth=name.count("."),
                )
            )
    return ModelSummary(
        rows=rows,
        input_size=tuple(input_size),
        total_params=count_params(model),
        trainable_params=count_params(model, trainable_only=True),
        macs=macs,
    )


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, three significant digits)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{prefix}{unit}"
    return f"{n:.0f}{unit}"


def resolve_input_size(
    model: str, input_size: tuple[int, int, int] | None, in_chans: int | None
) -> tuple[int, int, int]:
    """The (C, H, W) to summarise ``model`` at: the family's default size, with ``in_chans``
    channels when given; a given size must agree with ``in_chans``."""
    from . import get_model_entry

    if input_size is None:
        return (in_chans or 3, *get_model_entry(model).input_size[1:])
    input_size = tuple(input_size)
    if in_chans is not None and in_chans != input_size[0]:
        raise ConfigError(
            f"--in-chans {in_chans} disagrees with --input-size {input_size[0]} "
            f"{input_size[1]} {input_size[2]}; give one or make them match"
        )
    if min(input_size) < 1:
        sizes = " ".join(map(str, input_size))
        raise ConfigError(f"--input-size {sizes}: sizes must be at least 1")
    return input_size


def small_input_note(model: str, input_size: tuple[int, int, int]) -> str | None:
    """Why a small input still runs, and what it costs (padding keeps every map >= 1x1)."""
    from . import get_model_entry

    stride = get_model_entry(model).total_stride
    if min(input_size[1:]) >= stride:
        return None
    h, w = input_size[1:]
    return (
        f"note: {model} shrinks its input {stride}-fold; at {h}x{w} its last stage works on "
        "1x1 maps"
    )


# He et al. 2016 (arXiv:1512.03385), Table 1: "FLOPs" at 224x224 (multiply-adds, x 10^9), of
# the original ("v1") bottleneck, strided on its first 1x1 convolution.
PAPER_TABLE1 = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 3.8,
    "resnet101": 7.6,
    "resnet152": 11.3,
}


def bottleneck_version(model: nn.Module) -> str | None:
    """``v1`` or ``v1.5`` for a network of bottleneck blocks (v1.5, torchvision's: the stride
    on the 3x3 convolution; v1, the paper's: on the first 1x1), None for basic blocks."""
    from .blocks import Bottleneck

    if not hasattr(model, "stride_in_1x1"):
        return None
    if not any(isinstance(m, Bottleneck) for m in model.modules()):
        return None
    return "v1" if model.stride_in_1x1 else "v1.5"


def format_summary(
    model_name: str, s: ModelSummary, version: str | None = None, v1_hint: bool = True
) -> str:
    """The per-layer table and totals. MACs are the paper's "FLOPs" (multiply-adds);
    ``version``: the bottleneck version (``bottleneck_version``), said on its own line, with
    Table 1's figure when the model is one of it, at 224x224, as the paper built it."""
    header = ("Layer", "Type", "Output shape", "Params", "MACs")
    body = [
        (
            "  " * r.depth + r.name,
            r.type,
            "x".join(str(d) for d in r.output_shape[1:]),
            f"{r.params:,}",
            human(r.macs),
        )
        for r in s.rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3])]
        right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    c, h, w = s.input_size
    out = [f"{model_name}  input 1x{c}x{h}x{w}", rule, line(header), rule]
    out += [line(row) for row in body]
    out += [
        rule,
        f"Total params:      {s.total_params:,}",
        f"Trainable params:  {s.trainable_params:,}",
        f"MACs:              {human(s.macs)}  (multiply-adds, one image: what the ResNet "
        "paper's Table 1 calls FLOPs)",
        f"FLOPs:             {human(s.flops)}  (= 2 x MACs: multiplications and additions "
        "counted apart)",
        f"Weights size:      {s.total_params * 4 / 2**20:.1f} MiB as fp32",
    ]
    if version == "v1.5":
        out.append(
            "Bottleneck:        v1.5 (stride on the 3x3 conv, as torchvision)"
            + ("; --v1 for the paper's (stride on the first 1x1)" if v1_hint else "")
        )
    elif version == "v1":
        out.append("Bottleneck:        v1 (stride on the first 1x1 conv, as the paper)")
    paper = PAPER_TABLE1.get(model_name)
    if paper is not None and s.input_size[1:] == (224, 224) and version in (None, "v1"):
        out.append(
            f"Paper (Table 1):   {paper} x 10^9 multiply-adds at 224x224 (here {s.macs / 1e9:.2f})"
        )
    return "\n".join(out)


def format_models(rows: list[dict], paper: bool = False) -> str:
    """The ``resnetlab models`` table of ``model_info`` rows; ``paper``: the papers' figures."""
    from ..core.fmt import table

    header = ["model", "family", "params", "MACs", "input"]
    header += ["paper params", "paper C10 err", "paper C100 err"] if paper else []
    body = []
    for r in rows:
        cells = [
            r["model"],
            r["family"],
            f"{r['params'] / 1e6:.2f}M",
            human(r["macs"]),
            "x".join(str(v) for v in r["input_size"][1:]),
        ]
        if paper:
            p = r["paper"]
            c100 = p.get("cifar100_error")
            cells += [
                f"{p['params_m']}M" if p else "-",
                f"{p['cifar10_error']:.2f}%" if p else "-",
                f"{c100:.2f}%" if c100 else "-",
            ]
        body.append(cells)
    lines = [table(header, body, right_from=2)]
    sources = sorted({r["paper"]["source"] for r in rows if r["paper"].get("source")})
    if paper and sources:
        lines.append("\npapers: " + "; ".join(sources) + " - CIFAR-10 test error.")
    plural = "s" if len(rows) != 1 else ""
    lines.append(
        f"\n{len(rows)} model{plural}. MACs: multiply-accumulates for one image at the input shown."
    )
    return "\n".join(lines)


def available_weights(name: str) -> list[dict]:
    """The published weights a model can start from: torchvision's tags with their ImageNet
    top-1 and evaluation preprocessing (from torchvision's own metadata, no download), and the
    timm name to look up on the Hugging Face hub (``hf-hub:timm/NAME.TAG``)."""
    from . import get_model_entry

    rows = []
    try:
        from torchvision.models import get_model_weights

        for w in get_model_weights(name):
            tf = w.transforms()
            top1 = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
            how = f"resize {tf.resize_size[0]} -> crop {tf.crop_size[0]}"
            rows.append({"weights": f"torchvision:{w.name}", "top1": top1, "preprocess": how})
    except (ValueError, KeyError, ImportError):
        pass
    timm_name = get_model_entry(name).timm_name
    if timm_name:
        rows.append(
            {
                "weights": f"hf-hub:timm/{timm_name}.<tag>",
                "top1": None,
                "preprocess": "from the hub's config.json",
            }
        )
    return rows


def format_weights(names: list[str]) -> str:
    """``resnetlab models --weights``: per model, the weights it can start from."""
    from ..core.fmt import table

    body = [
        [n, r["weights"], f"{r['top1']:.2f}%" if r["top1"] else "-", r["preprocess"]]
        for n in names
        for r in available_weights(n)
    ]
    if not body:
        return "no published weights for these models (train from scratch, or --weights FILE)"
    return table(["model", "--weights", "ImageNet top-1", "evaluation"], body, right_from=9)
