"""The closing block of a training: best epoch, held-out scores, calibration, time and the
run folder, as ``resnetlab train`` and ``resnetlab.fit(verbose=True)`` print it."""

from __future__ import annotations

from ..core.fmt import pct


def closing_lines(s: dict) -> list[str]:
    """The lines that end a training, from its ``summary.json`` mapping ``s``."""
    lines = [f"best epoch        {s['best_epoch']} of {s['epochs_completed']}"]
    if "best_val_map" in s:  # multi-label
        lines.append(f"best val mAP      {pct(s['best_val_map'])}")
        if s.get("test_map") is None:
            lines.append("test mAP          -   (no test split)")
        else:
            lines.append(
                f"test mAP          {pct(s['test_map'])}   (best checkpoint; F1 micro "
                f"{pct(s['test_f1_micro'])}, macro {pct(s['test_f1_macro'])}, exact match "
                f"{pct(s['test_exact_match'])} at the per-class thresholds)"
            )
    else:
        lines.append(f"best val top-1    {pct(s['best_val_top1'])}")
        if s.get("test_top1") is None:
            lines.append("test top-1        -   (no test split)")
        else:
            lines.append(f"test top-1        {pct(s['test_top1'])}   (best checkpoint)")
    if s.get("temperature") is not None:
        lines.append(
            f"calibration       T = {s['temperature']:.3g}, ECE "
            f"{pct(s['ece_before'])} -> {pct(s['ece_after'])} (val)"
        )
    elif s.get("calibration_skipped"):
        lines.append(f"calibration       skipped: {s['calibration_skipped']}")
    speed = f"{s['train_images_per_second']:,.0f} images/s ({s['precision']}, {s['device']})"
    lines.append(f"time              {s['train_seconds']:.1f} s training, {speed}")
    lines.append(f"run folder        {s['run_dir']}")
    return lines
