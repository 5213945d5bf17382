"""The bookkeeping of one training epoch: running sums, losses waiting for their NaN check,
images seen and time taken, kept on the device so that a step never waits for the host."""

from __future__ import annotations

import time

import torch

from ..core.errors import TrainingError
from . import distributed as D


class NonFiniteLoss(TrainingError):
    def __init__(self, step: int, last_finite: float | None) -> None:
        self.step, self.last_finite = step, last_finite
        last = f"{last_finite:.4g}" if last_finite is not None else "none"
        super().__init__(
            f"loss became non-finite at step {step} (last finite loss: {last}); stopped. "
            "No checkpoint was written from these weights. Try a lower --lr, --clip-grad 1.0, "
            "or --precision fp32."
        )


class EpochTally:
    """Sums of (loss * n, correct, n) over the epoch's steps so far, on the device; for
    multi-label targets an image is correct when all its labels are (the exact-match ratio).

    ``partial`` continues the sums a mid-epoch checkpoint saved (``partial_sums``), so that
    a resumed epoch reports the same training loss and accuracy as an uninterrupted one."""

    def __init__(self, device: torch.device, partial: torch.Tensor | None = None) -> None:
        self.sums = torch.zeros(3, device=device)
        if partial is not None:
            self.sums += partial.to(device)
        self.pending: list[torch.Tensor] = []  # step losses not yet checked for NaN/inf
        self.images = 0  # seen by this process since the epoch (or the resume) started
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> None:
        """Count one step: its loss (a device scalar), logits and targets."""
        n = target.shape[0]
        self.images += n
        loss = loss.detach()
        self.pending.append(loss)
        with torch.no_grad():
            if target.dim() == 2:  # multi-label: every label of the image right at 0.5
                correct = (out.detach() > 0).eq(target > 0.5).all(1).sum()
            else:
                correct = out.detach().argmax(1).eq(target).sum()
            self.sums += torch.stack(
                [loss * n, correct.float(), torch.tensor(float(n), device=self.sums.device)]
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def check_finite(self, last_step: int, losses: list[float]) -> None:
        """Move the pending losses (the steps up to ``last_step``) to ``losses``; the first
        non-finite one raises ``NonFiniteLoss``. One host sync for all of them."""
        if not self.pending:
            return
        values = torch.stack(self.pending).float().cpu()
        first_step = last_step - len(self.pending) + 1
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            last = values[i - 1].item() if i > 0 else (losses[-1] if losses else None)
            raise NonFiniteLoss(first_step + i, last)
        losses.extend(values.tolist())
        self.pending.clear()

    def means(self, dist: D.DistInfo) -> dict[str, float]:
        """Training loss and top-1 over every rank's steps of the epoch."""
        sums = D.all_reduce_sum(self.sums, dist).cpu()
        count = max(sums[2].item(), 1.0)
        return {"train_loss": sums[0].item() / count, "train_top1": sums[1].item() / count}
