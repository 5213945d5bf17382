"""The one fingerprint of a model's weights: ``summary.json``'s ``weights_sha256``, the ONNX
metadata's, the backend cache's key and a teacher's identity all use it, so the same weights
always have the same name."""

from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, values).

    Stored in each ONNX export, so that predict and serve can tell an export made from
    other weights (say, before ``train --resume`` rewrote the run) from a current one."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu")
        # Layout and precision of the copy in memory are not part of the weights.
        t = (t.float() if t.is_floating_point() else t).contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()
