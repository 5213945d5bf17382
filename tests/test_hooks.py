"""The trainer's hooks and its typed progress: a user's hook is told of each event in order
and can end a run; early stopping and precise BatchNorm are hooks; the progress a checkpoint
saves is one dataclass that reads back what it wrote."""

import pytest
import torch

from resnetlab.train import Trainer, resolve_config
from resnetlab.train.hooks import EarlyStopping, Hook, PreciseBatchNorm, default_hooks
from resnetlab.train.state import RunProgress

TINY = {"model": "resnet20", "model_kwargs": {"widths": [4, 8, 8]}, "batch_size": 64}


def _cfg(tmp_path, **kw):
    base = dict(TINY, data="digits", epochs=3, out=str(tmp_path), name="run", num_workers=0)
    base.update(kw)
    return resolve_config(base)


class Recorder(Hook):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events, self.stop_after = [], stop_after

    def fit_start(self, trainer) -> None:
        self.events.append(("fit_start", trainer.state.epoch))

    def epoch_trained(self, trainer, stats: dict) -> None:
        assert stats["train_loss"] > 0
        self.events.append(("epoch_trained", trainer.state.epoch))

    def epoch_end(self, trainer, row: dict, improved: bool) -> str | None:
        assert trainer.state.history[-1] is row
        self.events.append(("epoch_end", row["epoch"]))
        if self.stop_after is not None and row["epoch"] >= self.stop_after:
            return f"stopped by the recorder after epoch {row['epoch']}"
        return None


def test_a_users_hook_sees_every_event_in_order_and_can_end_the_run(tmp_path, capsys):
    hook = Recorder(stop_after=2)
    trainer = Trainer(_cfg(tmp_path, precise_bn=False), verbose=True, hooks=[hook])
    summary = trainer.fit()
    assert hook.events == [
        ("fit_start", 0),
        ("epoch_trained", 1),
        ("epoch_end", 1),
        ("epoch_trained", 2),
        ("epoch_end", 2),
    ]
    assert summary["epochs_completed"] == 2 and trainer.epoch == trainer.state.epoch == 2
    assert "stopped by the recorder after epoch 2" in capsys.readouterr().err


def test_the_settings_choose_the_hooks():
    cfg = resolve_config(dict(TINY, data="digits", patience=2, precise_bn=True))
    kinds = [type(h).__name__ for h in default_hooks(cfg)]
    assert kinds == ["PreciseBatchNorm", "EpochRecords", "EarlyStopping"]
    cfg = resolve_config(dict(TINY, data="digits", precise_bn=False))
    assert [type(h).__name__ for h in default_hooks(cfg, print)] == ["EpochRecords", "Callback"]
    stop = EarlyStopping(2)
    said = [stop.epoch_end(None, {}, improved) for improved in (True, False, True, False, False)]
    assert said[:4] == [None] * 4 and "no val improvement for 2 epochs" in said[4]
    assert isinstance(PreciseBatchNorm(), Hook)


def test_run_progress_reads_back_what_it_wrote_and_old_checkpoints(tmp_path):
    p = RunProgress(epoch=2, step_in_epoch=3, global_step=17, train_seconds=1.5, train_images=9)
    p.history.append({"epoch": 1, "train_loss": 0.5})
    p.best.update(epoch=1, score=[0.9, -0.3])
    back = RunProgress.from_checkpoint(p.to_checkpoint())
    assert back == p and back.history is not p.history  # a copy: a later epoch changes neither
    # a checkpoint holds the progress under the keys every checkpoint has had
    Trainer(_cfg(tmp_path, epochs=1), verbose=False).fit()
    ck = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    saved = RunProgress.from_checkpoint(ck)
    assert saved.epoch == 1 and len(saved.history) == 1 and saved.best["epoch"] == 1
    assert {"epoch", "step_in_epoch", "global_step", "history", "best"} <= set(ck)
    assert RunProgress.from_checkpoint({"epoch": 4}).best["epoch"] is None  # an early format
    with pytest.raises(KeyError):
        RunProgress.from_checkpoint({})
