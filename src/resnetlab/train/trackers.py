"""How a run ended (``status.json``), and the experiment trackers a run reports to.

``--tracker mlflow`` / ``--tracker wandb``: the resolved configuration as parameters, each
epoch's metrics, the test and calibration results, and the model, ``config.yaml``, the summary
and (once made) the report as artifacts. ``tracker.json`` in the run folder records the
tracker's run, so ``train --resume`` continues that run and ``report`` adds its page to it.

``status.json`` says whether a run finished, was stopped on purpose (Ctrl-C, SIGTERM,
``--max-steps``: resumable) or failed (an error: its message is kept), so ``resnetlab runs``
tells them apart; a run still going holds its folder's lock, and one killed outright (SIGKILL,
out of memory) leaves the lock file behind without a holder.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from ..artifacts.run import RunDir
from ..core.errors import ConfigError
from ..core.files import atomic_write_text

log = logging.getLogger(__name__)

STATES = ("finished", "stopped", "failed", "running")


def end_state(exc: BaseException | None) -> tuple[str, str | None]:
    """``(state, reason)`` for a run whose ``fit`` ended with ``exc`` (None: it finished)."""
    if exc is None:
        return "finished", None
    # The engine's RunStopped, by name: the engine imports this module, not the other way.
    if any(c.__name__ == "RunStopped" for c in type(exc).__mro__):
        return "stopped", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "stopped", "interrupted (Ctrl-C twice: stopped at once)"
    if isinstance(exc, SystemExit):
        return "stopped", f"stopped at once (exit status {exc.code})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return "failed", f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_end(run: RunDir, exc: BaseException | None, epoch: int | None = None) -> dict:
    """Write ``status.json`` for a run whose training ended with ``exc`` (None: finished).
    A folder that cannot be written keeps what it had: the status is a note, never a new
    error on top of the one that ended the run."""
    state, reason = end_state(exc)
    status = {
        "state": state,
        "reason": reason,
        "epochs_completed": epoch,
        "ended": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    }
    try:
        atomic_write_text(run.status, json.dumps(status, indent=2, ensure_ascii=False) + "\n")
    except OSError as err:  # a full disk, a read-only folder: the run's own error says so
        log.debug("%s: status not written (%s)", run.status, err)
    return status


def records_outcome(fit):
    """Decorates ``Trainer.fit``: however it ends (returns, stops, raises), the main process
    writes ``status.json``, then the exception, if any, goes on as it was."""

    @functools.wraps(fit)
    def wrapper(trainer, on_epoch_end=None):
        tracker = None
        try:
            tracker = open_tracker(trainer)

            def epoch_end(row: dict) -> None:
                if tracker is not None:
                    tracker.epoch(row)
                if on_epoch_end is not None:
                    on_epoch_end(row)

            result = fit(trainer, epoch_end)
            if tracker is not None:
                tracker.finish(result)
        except BaseException as exc:
            _ended(trainer, exc, tracker)
            raise
        _ended(trainer, None, tracker)
        return result

    return wrapper


def _ended(trainer, exc: BaseException | None, tracker=None) -> None:
    run = getattr(trainer, "run", None)
    if run is None or not trainer.dist.is_main:
        return
    status = record_end(run, exc, getattr(trainer, "epoch", None))
    if tracker is not None:
        try:
            tracker.end(status["state"])
        except Exception as err:  # noqa: BLE001  the run's own outcome matters more
            log.warning("the tracker run could not be closed: %s", _first_line(err))
            if exc is None:
                raise


# ------------------------------------------------------------------------------ trackers

DEFAULT_PROJECT = "resnetlab"
# The run-folder files each tracker run gets at the end, and where under its artifacts.
ARTIFACTS = (
    ("WEIGHTS", "model"),
    ("META", "model"),
    ("CONFIG", ""),
    ("SUMMARY", ""),
    ("METRICS", ""),
    ("CALIBRATION", ""),
    ("REPORT", "report"),
)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved configuration as tracker parameters: nested mappings flattened with dots
    (``model_kwargs.widths``), values as text (lists as JSON, None as ``None``)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (list, tuple, dict)):
            out[key] = json.dumps(v, ensure_ascii=False)
        else:
            out[key] = str(v)
    return out


def numbers(row: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a row (an epoch of metrics.csv, summary.json), as floats."""
    out = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v == v and v not in (float("inf"), float("-inf")):
            out[prefix + k] = float(v)
    return out


def _strip_credentials(uri: str) -> str:
    """A URI without the ``user:password@`` part, for files and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_tracker_record(run: RunDir) -> dict:
    try:
        data = json.loads(run.tracker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class MLflowTracker:
    """A run of an MLflow tracking server (or store), through ``MlflowClient``: no global
    active run, so a notebook or a tuning study can train several at once."""

    name = "mlflow"

    def __init__(self, uri: str | None, project: str | None) -> None:
        from ..core.optional import require

        require("mlflow", "--tracker mlflow")
        from mlflow.tracking import MlflowClient

        env = os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = uri or env or None
        if self.uri and self.uri.startswith(("http://", "https://")):
            _check_reachable(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.uri = self.client.tracking_uri if hasattr(self.client, "tracking_uri") else self.uri
        self.project = project or DEFAULT_PROJECT
        self.run_id: str | None = None

    def start(self, run: RunDir, params: dict[str, str], resume: dict | None) -> dict:
        from mlflow.entities import Param, RunTag

        c = self.client
        if resume and resume.get("run_id"):
            self.run_id = resume["run_id"]
            try:
                have = c.get_run(self.run_id).data.params
            except Exception as exc:  # noqa: BLE001  mlflow's own errors: unknown run, no server
                raise ConfigError(
                    f"--tracker mlflow: cannot continue run {self.run_id} at "
                    f"{self.uri}: {_first_line(exc)}"
                ) from None
            c.update_run(self.run_id, status="RUNNING")
            new = {k: v for k, v in params.items() if k not in have}
            changed = {
                k: f"{have[k]} -> {v}" for k, v in params.items() if k in have and have[k] != v
            }
            tags = [RunTag(f"resnetlab.resumed.{k}", v) for k, v in changed.items()]
            self._batch(params=[Param(k, v) for k, v in new.items()], tags=tags)
        else:
            exp = c.get_experiment_by_name(self.project)
            exp_id = exp.experiment_id if exp else c.create_experiment(self.project)
            tags = {"resnetlab.run_dir": str(run.path.resolve()), "mlflow.source.name": "resnetlab"}
            self.run_id = c.create_run(exp_id, run_name=run.name, tags=tags).info.run_id
            self._batch(params=[Param(k, v) for k, v in params.items()])
        info = c.get_run(self.run_id).info
        return {
            "tracker": "mlflow",
            "run_id": self.run_id,
            "experiment_id": info.experiment_id,
            "experiment": self.project,
            "tracking_uri": _strip_credentials(str(self.uri)),
        }

    def _batch(self, metrics=(), params=(), tags=()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        for i in range(0, max(len(metrics), len(params), len(tags), 1), 100):  # mlflow's limit
            self.client.log_batch(
                self.run_id,
                metrics=metrics[i : i + 100],
                params=params[i : i + 100],
                tags=tags[i : i + 100],
            )

    def log(self, values: dict[str, float], step: int | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(k, v, now, step or 0) for k, v in values.items()])

    def log_summary(self, values: dict[str, float]) -> None:
        self.log(values, None)

    def log_files(self, files: list[tuple[Path, str]]) -> None:
        for path, where in files:
            self.client.log_artifact(self.run_id, str(path), where or None)

    def end(self, state: str) -> None:
        status = {"finished": "FINISHED", "stopped": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """A Weights & Biases run; ``WANDB_MODE=offline`` keeps it on disk (``RUN/wandb/``) for a
    later ``wandb sync``."""

    name = "wandb"

    def __init__(self, uri: str | None, project: str | None) -> None:
        from ..core.optional import require

        self.wandb = require("wandb", "--tracker wandb")
        if uri:
            os.environ["WANDB_BASE_URL"] = uri
        self.project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.run = None

    def start(self, run: RunDir, params: dict[str, str], resume: dict | None) -> dict:
        w = self.wandb
        run_id = resume.get("run_id") if resume else None
        folder = os.environ.get("WANDB_DIR") or str(run.path)
        try:
            self.run = w.init(
                project=self.project,
                name=run.name,
                id=run_id or None,
                resume="allow" if run_id else None,
                dir=folder,
                config=params,
                settings=w.Settings(console="off", silent=True),
            )
        except Exception as exc:  # noqa: BLE001  wandb's own errors: no login, no server
            raise ConfigError(
                f"--tracker wandb: {_first_line(exc)} (offline: set WANDB_MODE=offline)"
            ) from None
        if run_id:  # settings a resumed run changed (epochs): the new values win
            self.run.config.update(params, allow_val_change=True)
        return {
            "tracker": "wandb",
            "run_id": self.run.id,
            "project": self.project,
            "entity": getattr(self.run, "entity", None) or None,
            "mode": os.environ.get("WANDB_MODE") or "online",
            "dir": str(Path(self.run.dir).parent) if getattr(self.run, "dir", None) else None,
        }

    def log(self, values: dict[str, float], step: int | None) -> None:
        self.run.log(values, step=step)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def log_files(self, files: list[tuple[Path, str]]) -> None:
        art = self.wandb.Artifact(f"{_artifact_name(self.run.name)}-model", type="model")
        for path, where in files:
            art.add_file(str(path), name=f"{where}/{path.name}" if where else path.name)
        self.run.log_artifact(art)

    def end(self, state: str) -> None:
        self.run.finish(exit_code=0 if state == "finished" else 1)


TRACKERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}


def _artifact_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An HTTP tracking server that does not answer is one line now, not minutes of retries."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"--tracker mlflow: no tracking server answers at "
            f"{_strip_credentials(uri)} ({reason}); start it (mlflow server ...) "
            "or give --tracker-uri"
        ) from None


class RunTracker:
    """The tracker run of one training: opened when ``fit`` starts (a resumed run reopens the
    one its folder records), fed each epoch's metrics, and at the end the test and calibration
    results and the model's files, then closed with the run's state."""

    def __init__(self, trainer) -> None:
        cfg = trainer.cfg
        self.run: RunDir = trainer.run
        self.backend = TRACKERS[cfg.tracker](cfg.tracker_uri, cfg.tracker_project)
        record = read_tracker_record(self.run)
        resume = (
            record
            if (trainer.resume_state is not None and record.get("tracker") == cfg.tracker)
            else None
        )
        params = flat_params(cfg.to_dict())
        params.update(
            {
                "num_classes": str(len(trainer.classes)),
                "classes": json.dumps(list(trainer.classes), ensure_ascii=False),
            }
        )
        self.record = self.backend.start(self.run, params, resume)
        atomic_write_text(
            self.run.tracker, json.dumps(self.record, indent=2, ensure_ascii=False) + "\n"
        )

    def epoch(self, row: dict) -> None:
        values = numbers({k: v for k, v in row.items() if k != "epoch"})
        self.backend.log(values, int(row["epoch"]))

    def finish(self, summary: dict) -> None:
        skip = ("world_size",)
        values = numbers({k: v for k, v in summary.items() if k not in skip})
        self.backend.log_summary(values)
        self.backend.log_files(self.files())

    def files(self) -> list[tuple[Path, str]]:
        out = []
        for attr, where in ARTIFACTS:
            path = self.run.path / getattr(RunDir, attr)
            if path.is_file():
                out.append((path, where))
        return out

    def end(self, state: str) -> None:
        self.backend.end(state)


def open_tracker(trainer) -> RunTracker | None:
    """The tracker run of ``trainer`` (main process, ``--tracker`` given), else None."""
    if getattr(trainer.cfg, "tracker", "none") in (None, "none") or not trainer.dist.is_main:
        return None
    return RunTracker(trainer)


def attach_files(run: str | os.PathLike | RunDir, files: list[tuple[Path, str]]) -> bool:
    """Add files made after training (``report.html``) to the tracker run the run folder
    records; False when it records none. MLflow adds them to the finished run; wandb resumes
    the run to log them."""
    rd = run if isinstance(run, RunDir) else RunDir(run)
    record = read_tracker_record(rd)
    if record.get("tracker") == "mlflow" and record.get("run_id"):
        from ..core.optional import require

        require("mlflow", "the run's MLflow tracker")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or record.get("tracking_uri")
        client = MlflowClient(tracking_uri=uri)
        for path, where in files:
            client.log_artifact(record["run_id"], str(path), where or None)
        return True
    if record.get("tracker") == "wandb" and record.get("run_id"):
        backend = WandbTracker(None, record.get("project"))
        backend.start(rd, {}, record)
        backend.log_files(files)
        backend.end("finished")
        return True
    return False
