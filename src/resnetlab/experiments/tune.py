"""Hyper-parameter search with Optuna: pruned early, resumable from its SQLite study."""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

import yaml

from ..artifacts.run import RunDir
from ..core.errors import ConfigError, ResnetlabError, TrainingError
from ..core.files import atomic_write_text
from ..core.fmt import pct
from ..core.optional import require
from ..core.plots import plot_tune_history
from ..train import TrainConfig, Trainer, resolve_config

STUDY_NAME = "resnetlab-tune"
# Settings that describe where a run goes, not how it trains: left out of best.yaml.
_NOT_IN_BEST = ("out", "name", "max_steps")
# What a new study trains when the caller leaves a setting out (None): short trials on the
# embedded digits, unlike `train`'s 20 epochs.
NEW_STUDY_DEFAULTS = {"data": "digits", "model": "resnet20", "epochs": 8}
# Settings the search chooses per trial: base values for them are ignored.
_TUNED = ("lr", "weight_decay", "batch_size", "label_smoothing", "schedule")
# Settings that change how fast a trial runs, not what it learns: a continued study may use
# other values for them (another machine, another number of cores).
_MACHINE = (
    "num_workers",
    "cache",
    "download",
    "channels_last",
    "compile",
    "checkpoint_every",
    "tensorboard",
    "device",
)
# `tune` flags; any other setting comes from its --config file.
_TUNE_FLAGS = ("data", "model", "epochs")
# The study's fixed settings, saved as a study user attribute on its first run.
_SETTINGS_ATTR = "settings"
# A sampler that keeps proposing finished points has run out of new ones: stop after this many.
_MAX_DUPLICATES = 20


def _suggest(trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 1e-3, 0.3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "schedule": trial.suggest_categorical("schedule", ["cosine", "multistep", "onecycle"]),
    }


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _mark_interrupted(study) -> int:
    """Trials left RUNNING by an interrupted search become FAIL, so they are not waited on."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    return len(stale)


def _run_config(out: Path, number: int) -> dict | None:
    """The complete configuration a trial's run folder was trained with, if it is here."""
    run = RunDir(out / f"trial-{number:03d}")
    return run.read_config() if run.has_config() else None


def _settings(cfg) -> dict:
    # Through JSON, as the study storage gives it back (tuples become lists), so that saved
    # and current settings compare equal when they are.
    return json.loads(json.dumps(cfg.to_dict()))


def _base_config(base: dict, study, out: Path, where: str, flag: str):
    """Resolve ``base`` (a None value: not given) against the study's saved settings.

    A new study takes what is given over ``NEW_STUDY_DEFAULTS``. A continued one keeps its own
    settings, so that its trials stay comparable, and refuses a given value that differs.
    """
    given = {k: v for k, v in base.items() if v is not None}
    saved = study.user_attrs.get(_SETTINGS_ATTR)
    if saved is None:
        # A study from before the settings were saved: its first trial's run folder has them.
        found = (_run_config(out, t.number) for t in study.get_trials(deepcopy=False))
        saved = next((c for c in found if c is not None), None)
    if saved is None:
        return resolve_config({**NEW_STUDY_DEFAULTS, **given})
    # Only today's settings: a field saved by another version of resnetlab may be gone.
    names = {f.name for f in fields(TrainConfig)} - {"out", "name"}
    saved = {k: v for k, v in saved.items() if k in names}
    now = _settings(resolve_config({**saved, **given}))
    for key in given:
        if key in _TUNED or key in _MACHINE or key not in saved or now[key] == saved[key]:
            continue
        fix = (
            f"--{key} {saved[key]}" if key in _TUNE_FLAGS else f"{key}: {saved[key]!r} in --config"
        )
        old, new = (repr(v) if isinstance(v, str) else v for v in (saved[key], now[key]))
        raise ConfigError(
            f"{where}: this study was run with {key} {old}, not {new}; "
            f"continue it with {fix} or use another --{flag}"
        )
    return resolve_config({**saved, **given})


def run_tune(
    base: dict,
    trials: int = 10,
    timeout: float | None = None,
    out: str | Path = "runs/tune",
    storage: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Run until ``trials`` trials are finished in the study (finished ones are not repeated).

    ``base`` holds the fixed settings (data, model, epochs, any TrainConfig field); a value of
    None means "not given": the study's saved value, or ``NEW_STUDY_DEFAULTS`` for a new study.
    Continuing a study with a different fixed setting raises ValueError.

    Returns the mapping written to ``OUT/best.json`` (``best_trial``, ``best_params``,
    ``best_yaml``, ``plot``: the path of the history's PNG...) and ``figures``:
    ``{"optimization_history": Figure}``, that PNG's matplotlib Figure (not in the JSON).
    """
    optuna = require("optuna", "resnetlab tune")
    from optuna.trial import TrialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    where, flag = (storage, "storage") if storage else (str(out), "out")
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    # A sampler seeded as in the previous call would propose that call's points again.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    base_cfg = _base_config(base, study, out, where, flag)
    settings = _settings(base_cfg)
    if _SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(_SETTINGS_ATTR, settings)
    interrupted = _mark_interrupted(study)
    done = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    remaining = max(0, trials - len(done))
    if verbose:
        print(
            f"study {storage}: {len(done)} finished trial(s), {interrupted} interrupted; "
            f"running {remaining} more",
            flush=True,
        )
    seen = {_key(t.params): t.number for t in done}

    def train(trial, params: dict) -> float:
        cfg = replace(base_cfg, **params, out=str(out), name=f"trial-{trial.number:03d}")
        cfg.check()
        trial.set_user_attr("config", _settings(cfg))
        trainer = Trainer(cfg, verbose=False)

        def report(row):
            val = row.get("val_map", row["val_top1"])  # multi-label runs are judged by mAP
            score = val if val is not None else -row["train_loss"]
            trial.report(score, row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        summary = trainer.fit(on_epoch_end=report)
        best = summary.get("best_val_map", summary["best_val_top1"])
        return best if best is not None else 0.0

    # Ask and tell rather than study.optimize: a proposed point that was already finished is
    # recorded as skipped and does not count towards the trials wanted.
    deadline = time.monotonic() + timeout if timeout is not None else None
    started = duplicates = 0
    while started < remaining and (deadline is None or time.monotonic() < deadline):
        trial = study.ask()
        params = _suggest(trial)
        twin = seen.get(_key(params))
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin)
            study.tell(trial, state=TrialState.FAIL)
            duplicates += 1
            if verbose:
                print(f"trial {trial.number}: skipped, same parameters as trial {twin}", flush=True)
            if duplicates >= _MAX_DUPLICATES:
                break
            continue
        started += 1
        try:
            value = train(trial, params)
        except optuna.TrialPruned as exc:
            study.tell(trial, state=TrialState.PRUNED)
            if verbose:
                print(f"trial {trial.number}: {exc} {params}", flush=True)
        except ResnetlabError as exc:  # a setting this trial cannot train with; try the next
            study.tell(trial, state=TrialState.FAIL)
            if verbose:
                print(f"trial {trial.number}: failed: {exc} {params}", flush=True)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            if verbose:
                print(f"trial {trial.number}: val top-1 {pct(value)} {params}", flush=True)
        seen[_key(params)] = trial.number
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise TrainingError(f"no trial completed in {storage}; see the messages above")
    best = study.best_trial
    # The best trial's own settings: those of a study from before they were saved per trial
    # may differ from today's.
    trained = best.user_attrs.get("config") or _run_config(out, best.number)
    best_all = trained or {**settings, **best.params}
    best_cfg = {k: v for k, v in best_all.items() if k not in _NOT_IN_BEST}
    atomic_write_text(
        out / "best.yaml", yaml.safe_dump(best_cfg, sort_keys=False, allow_unicode=True)
    )
    history_png = out / "optimization_history.png"
    drawn = plot_tune_history(
        [
            (
                t.number,
                t.value if t.value is not None else max(t.intermediate_values.values()),
                t.state.name == "COMPLETE",
            )
            for t in study.trials
            if t.value is not None or t.intermediate_values
        ],
        history_png,
    )
    result = {
        "storage": storage,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": {
            s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL")
        },
        "best_yaml": str(out / "best.yaml"),
        "plot": str(history_png),
    }
    atomic_write_text(out / "best.json", json.dumps(result, indent=2))
    return {**result, "figures": {"optimization_history": drawn}}
