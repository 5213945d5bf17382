"""Hyper-parameter search with Optuna: pruned early, resumable from its SQLite study."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from ..io import atomic_write_text
from ..train import Trainer, resolve_config

STUDY_NAME = "resnetlab-tune"
# Settings that describe where a run goes, not how it trains: left out of best.yaml.
_NOT_IN_BEST = ("out", "name", "max_steps")


def _suggest(trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 1e-3, 0.3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "schedule": trial.suggest_categorical("schedule", ["cosine", "multistep", "onecycle"]),
    }


def _mark_interrupted(study) -> int:
    """Trials left RUNNING by an interrupted search become FAIL, so they are not waited on."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return len(stale)


def run_tune(
    base: dict,
    trials: int = 10,
    timeout: float | None = None,
    out: str | Path = "runs/tune",
    storage: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Run until ``trials`` trials are finished in the study (finished ones are not repeated)."""
    import optuna

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    base_cfg = resolve_config(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    interrupted = _mark_interrupted(study)
    done = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    remaining = max(0, trials - len(done))
    if verbose:
        print(f"study {storage}: {len(done)} finished trial(s), {interrupted} interrupted; "
              f"running {remaining} more", flush=True)  # fmt: skip

    def objective(trial) -> float:
        params = _suggest(trial)
        cfg = replace(base_cfg, **params, out=str(out), name=f"trial-{trial.number:03d}")
        cfg.check()
        trainer = Trainer(cfg, verbose=False)

        def report(row):
            score = row["val_top1"] if row["val_top1"] is not None else -row["train_loss"]
            trial.report(score, row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        try:
            summary = trainer.fit(on_epoch_end=report)
        except optuna.TrialPruned as exc:
            if verbose:
                print(f"trial {trial.number}: {exc} {params}", flush=True)
            raise
        if verbose:
            print(f"trial {trial.number}: val top-1 {summary['best_val_top1']:.2%} {params}",
                  flush=True)  # fmt: skip
        return summary["best_val_top1"] if summary["best_val_top1"] is not None else 0.0

    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(ValueError,))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise RuntimeError(f"no trial completed in {storage}; see the messages above")
    best = study.best_trial
    best_cfg = {k: v for k, v in replace(base_cfg, **best.params).to_dict().items()
                if k not in _NOT_IN_BEST}  # fmt: skip
    atomic_write_text(out / "best.yaml", yaml.safe_dump(best_cfg, sort_keys=False,
                                                        allow_unicode=True))  # fmt: skip
    history_png = out / "optimization_history.png"
    _plot_history(study, history_png)
    result = {
        "storage": storage,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": {
            s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")
        },  # fmt: skip
        "best_yaml": str(out / "best.yaml"),
        "plot": str(history_png),
    }
    atomic_write_text(out / "best.json", json.dumps(result, indent=2))
    return result


def _plot_history(study, path: Path) -> None:
    from ..report.plots import _plt

    plt = _plt()
    trials = [t for t in study.trials if t.value is not None or t.intermediate_values]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs, ys, best, running = [], [], [], float("-inf")
    for t in trials:
        value = t.value if t.value is not None else max(t.intermediate_values.values())
        xs.append(t.number)
        ys.append(value * 100)
        if t.state.name == "COMPLETE":
            running = max(running, value * 100)
        best.append(running if running > float("-inf") else None)
    colors = ["tab:blue" if t.state.name == "COMPLETE" else "tab:gray" for t in trials]
    ax.scatter(xs, ys, c=colors, label="trial (grey: pruned)")
    ax.step(xs, [b if b is not None else float("nan") for b in best], where="post",
            color="tab:red", label="best so far")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
