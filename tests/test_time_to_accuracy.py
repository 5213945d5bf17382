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
    kw = dict(
        model_kwargs={"widths": [4, 8, 8], "norm_layer": "groupnorm"},
        max_steps=2,
        clip_grad=1.0,
        lr=0.01,
    )
    one = _fit(_cfg(tmp_path / "one", folder, **kw))
    four = _fit(_cfg(tmp_path / "four", folder, accum_steps=4, **kw))
    a, b = one.model.state_dict(), four.model.state_dict()
    assert one.global_step == four.global_step == 2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(
        a["fc.weight"],
        create_model("resnet20", num_classes=3, widths=[4, 8, 8], norm_layer="groupnorm").fc.weight,
    )
    assert one.step_losses == pytest.approx(four.step_losses, rel=1e-5)


def test_accum_steps_is_checked(tmp_path, folder):
    with pytest.raises(ValueError, match="--accum-steps"):
        _cfg(tmp_path, folder, accum_steps=0)


# ----------------------------------------------------------------------- cached features


def _pretrained(tmp_path):
    """A tiny 'pretrained' backbone whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(1)
    src = create_model("resnet20", num_classes=10, widths=[4, 8, 8])
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pre.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(src.state_dict(), path)
    return src, path


def _extract(tmp_path, path, **kw):
    return dict(weights=str(path), mode="feature-extract", lr=0.05, epochs=3, **kw)


def test_cached_features_train_the_head_as_the_frozen_backbone_does(tmp_path, folder):
    src, path = _pretrained(tmp_path)
    cached = _fit(_cfg(tmp_path / "c", folder, **_extract(tmp_path, path)))
    # The reference runs the frozen backbone (BN in eval mode) on every batch of every
    # epoch, on the same unaugmented images the cache holds.
    ref = Trainer(
        _cfg(tmp_path / "r", folder, feature_cache=False, **_extract(tmp_path, path)), verbose=False
    )
    ref.train_transform = ref.data.batch_transform(False, ref.train_loader.geometric)
    ref.fit()
    assert cached.features is not None and ref.features is None
    assert cached.features.features.shape == (1, len(ref.data.source.splits["train"]), 8)
    assert cached.step_losses == pytest.approx(ref.step_losses, rel=1e-5)
    a, b = cached.model.state_dict(), ref.model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(a[k], v), k  # backbone and its BN statistics untouched
    torch.testing.assert_close(a["fc.weight"], b["fc.weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["fc.bias"], b["fc.bias"], rtol=1e-5, atol=1e-6)
    # The run folder holds the whole model: backbone + trained head.
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "c" / "runs" / "run" / "model.safetensors")
    key = "layer1.0.conv1.weight"
    assert set(saved) == set(a) and torch.equal(saved[key], src.state_dict()[key])


def test_feature_cache_resume_is_bit_exact(tmp_path, folder):
    _, path = _pretrained(tmp_path)
    kw = _extract(tmp_path, path, feature_views=2)
    full = _fit(_cfg(tmp_path / "a", folder, **kw))
    steps = len(full.train_loader)
    first = _fit(_cfg(tmp_path / "b", folder, max_steps=steps + 1, **kw))
    rest = _fit(_cfg(tmp_path / "b", folder, **kw), resume=tmp_path / "b" / "runs" / "run")
    assert first.step_losses + rest.step_losses == full.step_losses
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Two augmented views, each image seen differently in each.
    views = full.features.features
    assert views.shape[0] == 2 and not torch.equal(views[0], views[1])


def test_feature_cache_spills_to_the_run_folder(tmp_path, folder):
    from resnetlab.train.features import FILE_NAME, build_cache

    _, path = _pretrained(tmp_path)
    t = Trainer(_cfg(tmp_path, folder, **_extract(tmp_path, path)), verbose=False)
    model = t.model
    t.run_dir.mkdir(parents=True, exist_ok=True)
    memory = build_cache(model, t.data, 0, t.device, "fp32", 16)
    disk = build_cache(model, t.data, 0, t.device, "fp32", 16, folder=t.run_dir, limit=0)
    assert (t.run_dir / FILE_NAME).is_file()
    assert torch.equal(memory.features, disk.features)


# ------------------------------------------------------------------ progressive resizing


def test_progressive_sizes_rise_to_the_full_size():
    from resnetlab.train.pacing import eval_size, train_size

    sizes = [train_size(224, e, 8, True) for e in range(8)]
    assert sizes[0] == 112 and sizes[-2:] == [224, 224]
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes)
    assert [train_size(224, e, 8, False) for e in range(8)] == [224] * 8
    assert eval_size(224, 112) == 128 and eval_size(224, 224) == 224  # FixRes, capped


def test_progressive_run_resumes_in_the_middle(tmp_path, folder):
    kw = dict(progressive=True, epochs=4)
    seen: list[int] = []
    full = Trainer(_cfg(tmp_path / "a", folder, **kw), verbose=False)
    hook = full.model.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[-1]) if m.training else None
    )
    full.fit()
    hook.remove()
    steps = len(full.train_loader)
    assert [full.train_size(e) for e in range(4)] == [16, 24, 24, 32]
    assert seen == [16] * steps + [24] * 2 * steps + [32] * steps
    # Stopped in epoch 2 (at 24 px), resumed: the same steps and weights.
    first = _fit(_cfg(tmp_path / "b", folder, max_steps=steps + 1, **kw))
    rest = _fit(_cfg(tmp_path / "b", folder, **kw), resume=tmp_path / "b" / "runs" / "run")
    assert first.step_losses + rest.step_losses == full.step_losses
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Validation at the same (FixRes) sizes: the same scores.
    assert [r["val_loss"] for r in rest.history] == [r["val_loss"] for r in full.history]


# --------------------------------------------------------------------------- time budget


def test_plan_epochs_fits_the_budget():
    from resnetlab.train.pacing import plan_epochs

    # 50 steps of 0.1 s: 5 s an epoch; 95 % of 60 s holds 11 of them.
    assert plan_epochs(60, 0.1, 50) == 11
    assert plan_epochs(60, 0.1, 50, eval_seconds=1.0) == 9
    assert plan_epochs(1, 0.1, 50) == 1  # never fewer than one epoch
    # Progressive epochs are cheaper (fewer pixels): more of them fit.
    assert plan_epochs(60, 0.1, 50, full=224, progressive=True) > 11


def test_time_budget_sets_a_schedule_that_ends_annealed(tmp_path, folder, monkeypatch):
    from resnetlab.train import pacing

    monkeypatch.setattr(pacing, "measure_step_seconds", lambda trainer: 0.01)
    # 2 steps an epoch (36 images, batch 16) of 0.01 s, validation 12 images at a third of
    # that, BatchNorm statistics measured again on the 2 batches at a third of a step each:
    # 0.0292 s an epoch; 95 % of 0.12 s holds 3 epochs.
    cfg = _cfg(tmp_path, folder, time_budget=0.002, epochs=50, warmup_epochs=1.0)
    t = Trainer(cfg, verbose=False)
    summary = t.fit()
    assert summary["epochs_completed"] == t.cfg.epochs == 3
    assert t.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # fully annealed
    import yaml

    saved = yaml.safe_load((tmp_path / "runs" / "run" / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["warmup_epochs"] == 1.0


def test_measured_step_leaves_the_run_untouched(tmp_path, folder):
    from resnetlab.train.pacing import measure_step_seconds

    t = Trainer(_cfg(tmp_path, folder), verbose=False)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    rng = torch.get_rng_state()
    assert measure_step_seconds(t, steps=1) > 0
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and not t.optimizer.state


# ------------------------------------------------------------------------------ recipes


def test_warmup_is_at_most_a_tenth_of_the_run():
    from resnetlab.train.optim import lr_factor

    # 20 epochs: the 1-epoch warmup as asked (10 steps an epoch).
    f = lr_factor(resolve_config({"epochs": 20, "warmup_epochs": 1.0}), 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    # 2 epochs: a whole epoch would be half the run; 0.2 epochs (2 steps) instead.
    f = lr_factor(resolve_config({"epochs": 2, "warmup_epochs": 1.0}), 10)
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0]) and f(19) < 0.01


def test_default_lr_scales_with_the_global_batch():
    from resnetlab.train.optim import build_optimizer, default_lr

    model = create_model("resnet20", num_classes=3, widths=[4, 8, 8])
    for batch, want in ((64, 0.025), (256, 0.1), (16, 0.00625)):
        cfg = resolve_config({"batch_size": batch})
        assert cfg.lr is None
        opt = build_optimizer(model, cfg)
        assert cfg.lr == pytest.approx(want)  # set on the config: config.yaml records it
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([want] * 4)
    assert default_lr(resolve_config({"batch_size": 64}), world_size=4) == pytest.approx(0.1)
    cfg = resolve_config({"batch_size": 256, "lr": 0.3})  # a given --lr is used as it is
    build_optimizer(model, cfg)
    assert cfg.lr == 0.3


def test_pretrained_weights_get_the_finetune_recipe_unless_told_otherwise(tmp_path):
    w = str(tmp_path / "w.pth")
    cfg = resolve_config({"weights": w})
    assert (cfg.recipe, cfg.optimizer, cfg.lr) == ("finetune", "adamw", 1e-3)
    assert resolve_config({"weights": w, "mode": "finetune"}).recipe == "finetune"
    # Flags win over the recipe; --recipe scratch keeps the from-scratch defaults.
    cfg = resolve_config({"weights": w, "lr": 3e-4})
    assert (cfg.optimizer, cfg.lr) == ("adamw", 3e-4)
    cfg = resolve_config({"weights": w, "recipe": "scratch"})
    assert (cfg.recipe, cfg.optimizer, cfg.lr) == ("scratch", "sgd", None)
    # Feature extraction (only a new head trains) and scratch runs keep the defaults.
    assert resolve_config({"weights": w, "mode": "feature-extract"}).recipe is None
    assert resolve_config({}).recipe is None


def test_the_run_says_which_recipe_it_follows(tmp_path, folder, capsys):
    _, path = _pretrained(tmp_path)
    base = dict(
        TINY,
        data=str(folder),
        input_size=32,
        epochs=10,
        num_workers=0,
        out=str(tmp_path / "runs"),
        max_steps=1,
    )
    with contextlib.suppress(RunStopped):
        Trainer(resolve_config(dict(base, weights=str(path), name="ft"))).fit()
    out = capsys.readouterr().err
    assert "recipe finetune (chosen for --weights; --recipe scratch for the from-scratch " in out
    assert "AdamW lr 0.001, batch 16, cosine, warmup 1 epoch(s)" in out
    with contextlib.suppress(RunStopped):
        Trainer(resolve_config(dict(base, name="s"))).fit()
    out = capsys.readouterr().err
    assert "recipe scratch: SGD nesterov lr 0.00625 (0.1 x batch 16 / 256), cosine" in out


# ---------------------------------------------------------------- precise BatchNorm stats


def test_bn_statistics_are_measured_again_with_the_final_weights(tmp_path, folder):
    from resnetlab.train.pacing import precise_bn_batches as batches
    from resnetlab.train.pacing import resized
    from resnetlab.train.precise_bn import recompute_bn_stats

    t = _fit(_cfg(tmp_path, folder, epochs=1))
    bn = t.model.bn1
    # Whatever the running statistics held before, they are replaced, not blended.
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(100.0)
    rng, modes = torch.get_rng_state(), [m.training for m in t.model.modules()]
    assert recompute_bn_stats(t) > 0
    assert torch.equal(rng, torch.get_rng_state())
    assert modes == [m.training for m in t.model.modules()]
    # By hand: the mean of bn1's input over the epoch's first batches, augmented as trained.
    from resnetlab.data.loader import mix_seed

    t.train_loader.sampler.set_epoch(0, 0)
    tf = resized(t.train_transform, 32)
    means = []
    with torch.no_grad():
        for i, (x, _) in enumerate(t.train_loader):
            if i >= batches(16, len(t.train_loader)):
                break
            x = tf(x, torch.Generator().manual_seed(mix_seed(0, 0, 0, i, 3)))
            means.append(t.model.conv1(x).mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)


def test_frozen_bn_statistics_are_left_alone(tmp_path, folder):
    src, path = _pretrained(tmp_path)
    t = _fit(_cfg(tmp_path, folder, feature_cache=False, **_extract(tmp_path, path)))
    a = t.model.state_dict()
    for k, v in src.state_dict().items():
        if "running" in k:
            assert torch.equal(a[k], v), k


def test_no_precise_bn_keeps_the_running_statistics(tmp_path, folder):
    on = _fit(_cfg(tmp_path, folder, epochs=1, name="on"))
    off = _fit(_cfg(tmp_path, folder, epochs=1, name="off", precise_bn=False))
    # The same steps and weights; only the statistics differ.
    assert torch.equal(on.model.conv1.weight, off.model.conv1.weight)
    assert not torch.equal(on.model.bn1.running_mean, off.model.bn1.running_mean)


def test_a_run_saved_before_precise_bn_resumes_without_it(tmp_path, folder):
    from resnetlab.train.config import resume_config

    saved = _cfg(tmp_path, folder).to_dict()
    del saved["precise_bn"]  # a config.yaml from before the setting existed
    assert resume_config(saved, {}, 1, tmp_path).precise_bn is False
    assert resume_config({**saved, "precise_bn": True}, {}, 1, tmp_path).precise_bn is True
