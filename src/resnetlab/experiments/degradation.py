"""The degradation experiment of He et al. 2016 (arXiv:1512.03385, Fig. 1 and Fig. 6).

A deeper *plain* network trains to a higher training error than a shallower one, although it
could copy the shallower net and set its extra layers to identity. Residual twins with the
same layers, recipe and seed do not degrade. Each depth is trained as a plain net and as a
residual net; the figure plots training and held-out error against iterations.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..core.errors import ConfigError, FileConflictError
from ..core.files import atomic_write_text
from ..core.fmt import pct
from ..core.plots import plot_degradation
from ..models.summary import count_params
from ..train import TrainConfig, Trainer, resolve_config

PLAIN_DEPTHS = (20, 32, 44, 56, 110)


def _train(cfg: TrainConfig, verbose: bool) -> tuple[dict, Trainer]:
    trainer = Trainer(cfg, verbose=False)
    if verbose:
        print(f"  training {cfg.model} (seed {cfg.seed}) ...", flush=True)
    return trainer.fit(), trainer


def run_degradation(
    data: str = "digits",
    depths: tuple[int, ...] = (20, 56),
    epochs: int = 12,
    seeds: int = 1,
    out: str | Path | None = None,
    recipe: str | None = None,
    overrides: dict | None = None,
    verbose: bool = True,
) -> dict:
    """Train plain and residual nets of each depth (``seeds`` each) and compare their errors.

    Returns the mapping written to ``OUT/results.json`` (``runs``, ``table``, ``verdict``,
    ``figure``: the path of ``degradation.png``) and ``figures``: ``{"degradation": Figure}``,
    the matplotlib Figure of that PNG (not in the JSON), for a notebook to show."""
    for d in depths:
        if d not in PLAIN_DEPTHS:
            raise ConfigError(f"--depths {d}: plain twins exist for {PLAIN_DEPTHS}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out or f"runs/degradation-{datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise FileConflictError(f"{out} already holds files; pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_config({"data": data, "epochs": epochs, **(overrides or {})}, recipe=recipe)
    runs = []
    for depth in depths:
        for kind in ("plain", "residual"):
            name = f"{'plain' if kind == 'plain' else 'resnet'}{depth}"
            for seed in range(seeds):
                cfg = replace(
                    base,
                    model=name,
                    seed=base.seed + seed,
                    out=str(out),
                    name=f"{name}-seed{base.seed + seed}",
                )
                start = time.perf_counter()
                summary, trainer = _train(cfg, verbose)
                history = trainer.history
                runs.append(
                    {
                        "depth": depth,
                        "kind": kind,
                        "model": name,
                        "seed": cfg.seed,
                        "params": count_params(trainer.model),
                        "steps_per_epoch": len(trainer.train_loader),
                        "train_error": [1 - r["train_top1"] for r in history],
                        "val_error": [
                            1 - r["val_top1"] if r["val_top1"] is not None else None
                            for r in history
                        ],
                        "test_error": 1 - summary["test_top1"]
                        if summary["test_top1"] is not None
                        else None,
                        "seconds": time.perf_counter() - start,
                    }
                )
    table = _table(runs)
    verdict = _verdict(table, depths)
    fig = out / "degradation.png"
    drawn = plot_degradation(runs, fig, data)
    result = {
        "data": data,
        "depths": list(depths),
        "epochs": epochs,
        "seeds": seeds,
        "runs": runs,
        "table": table,
        "verdict": verdict,
        "figure": str(fig),
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    atomic_write_text(out / "results.csv", _csv(table))
    atomic_write_text(out / "summary.md", _markdown(result))
    return {**result, "figures": {"degradation": drawn}}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _table(runs: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((r["depth"], r["kind"]) for r in runs):
        group = [r for r in runs if (r["depth"], r["kind"]) == key]
        train_m, train_s = _mean_std([r["train_error"][-1] for r in group])
        tests = [r["test_error"] for r in group if r["test_error"] is not None]
        test_m, test_s = _mean_std(tests) if tests else (None, None)
        rows.append(
            {
                "model": group[0]["model"],
                "depth": key[0],
                "kind": key[1],
                "params": group[0]["params"],
                "seeds": len(group),
                "final_train_error": train_m,
                "final_train_error_std": train_s,
                "final_test_error": test_m,
                "final_test_error_std": test_s,
                "seconds": statistics.fmean(r["seconds"] for r in group),
            }
        )
    return rows


# A deeper net "degrades" when its final training error exceeds the shallower one's by more
# than this: one point, well above the seed-to-seed noise of a converged small net.
DEGRADATION_MARGIN = 0.01


def _verdict(table: list[dict], depths) -> dict:
    if len(depths) < 2:
        return {"plain_degraded": None, "residual_degraded": None, "text": "one depth only"}
    lo, hi = min(depths), max(depths)

    def err(kind, depth):
        return next(
            r["final_train_error"] for r in table if r["kind"] == kind and r["depth"] == depth
        )

    p_lo, p_hi = err("plain", lo), err("plain", hi)
    r_lo, r_hi = err("residual", lo), err("residual", hi)
    plain = p_hi > p_lo + DEGRADATION_MARGIN
    residual = r_hi > r_lo + DEGRADATION_MARGIN
    text = (
        f"Plain nets: plain{hi} ended with {pct(p_hi)} training error against {pct(p_lo)} for "
        f"plain{lo} - "
        + (
            "the deeper plain net trained worse: the degradation problem."
            if plain
            else "no degradation at this budget."
        )
        + f" Residual nets: resnet{hi} {pct(r_hi)} against resnet{lo} {pct(r_lo)} - "
        + (
            "the deeper residual net trained worse too."
            if residual
            else "the deeper residual net did not train worse."
        )
        + f" (A difference counts when it exceeds {pct(DEGRADATION_MARGIN, 0)}.)"
    )
    return {"plain_degraded": plain, "residual_degraded": residual, "text": text}


def _csv(table: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def _markdown(result: dict) -> str:
    lines = [
        f"# Degradation experiment on {result['data']}",
        "",
        f"{result['epochs']} epochs per net, {result['seeds']} seed(s) each; plain nets have "
        "the same layers as their residual twins, without shortcuts (option A: same params).",
        "",
        "| model | depth | params | final train error | final test error | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        lines.append(
            f"| {r['model']} | {r['depth']} | {r['params']:,} | "
            f"{pct(r['final_train_error'], std=r['final_train_error_std'])} | "
            f"{pct(r['final_test_error'], std=r['final_test_error_std'])} | {r['seconds']:.0f} |"
        )
    lines += ["", result["verdict"]["text"], "", "![degradation](degradation.png)", ""]
    return "\n".join(lines)


def format_degradation(r: dict) -> str:
    """The study's table (mean ± std over seeds) and its verdict, as the CLI prints them."""
    from ..core.fmt import pct, table

    header = ["model", "depth", "params", "final train err", "final test err", "time (s)"]
    rows = [
        [
            t["model"],
            str(t["depth"]),
            f"{t['params']:,}",
            pct(t["final_train_error"], std=t["final_train_error_std"]),
            pct(t["final_test_error"], std=t["final_test_error_std"]),
            f"{t['seconds']:.0f}",
        ]
        for t in r["table"]
    ]
    return table(header, rows, right_from=1) + "\n\n" + r["verdict"]["text"]
