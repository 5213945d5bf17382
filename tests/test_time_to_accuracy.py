"""Time to accuracy: gradient accumulation, cached features, progressive resizing, budgets.

Tiny models and data; fp32 so that equalities are up to float rounding only."""

import contextlib

import pytest
import torch

from datagen import make_folder
from resnetlab import create_model
from resnetlab.train import RunStopped, Trainer, resolve_config
from resnetlab.train.accumulate import micro_batches

TINY = {"model": "resnet20", "model_kwargs": {"widths": [4, 8, 8]}, "batch_size": 16}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root, {"a": 20, "b": 20, "c": 20}, size=(36, 36))
    return root


def _cfg(tmp_path, folder, **kw):
    base = dict(TINY, data=str(folder), input_size=32, epochs=2, out=str(tmp_path / "runs"))
    base.update(num_workers=0, val_ratio=0.2, test_ratio=0.2, name="run", warmup_epochs=0.0)
    base.update(precision="fp32", deterministic=True)
    base.update(kw)
    return resolve_config(base)


def _fit(cfg, resume=None):
    t = Trainer(cfg, resume=resume, verbose=False)
    with contextlib.suppress(RunStopped):
        t.fit()
    return t


# ------------------------------------------------------------------------- accumulation


def test_micro_batches_cover_the_batch():
    assert micro_batches(10, 3) == [slice(0, 3), slice(3, 7), slice(7, 10)]
    assert micro_batches(2, 4) == [slice(0, 1), slice(1, 2)]


def test_accumulated_micro_batches_give_the_big_batch_update(tmp_path, folder):
    """Without batch statistics (GroupNorm), 4 micro-batches of 4 images make the same update
    as one batch of 16: the same parameters after 2 steps, up to float rounding (more steps
    at a high lr would amplify the rounding, not test the accumulation)."""
    kw = dict(model_kwargs={"widths": [4, 8, 8], "norm_layer": "groupnorm"}, max_steps=2,
              clip_grad=1.0, lr=0.01)  # fmt: skip
    one = _fit(_cfg(tmp_path / "one", folder, **kw))
    four = _fit(_cfg(tmp_path / "four", folder, accum_steps=4, **kw))
    a, b = one.model.state_dict(), four.model.state_dict()
    assert one.global_step == four.global_step == 2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(a["fc.weight"], create_model("resnet20", num_classes=3,
                           widths=[4, 8, 8], norm_layer="groupnorm").fc.weight)  # fmt: skip
    assert one.step_losses == pytest.approx(four.step_losses, rel=1e-5)


def test_accum_steps_is_checked(tmp_path, folder):
    with pytest.raises(ValueError, match="--accum-steps"):
        _cfg(tmp_path, folder, accum_steps=0)
