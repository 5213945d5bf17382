import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from resnetlab import create_model, list_models
from resnetlab.cli.commands import main
from resnetlab.models import get_model_entry
from resnetlab.models.registry import ZOO_STATS
from resnetlab.models.summary import compute_model_stats, count_macs, summarize


@pytest.mark.parametrize(
    "name, size, expected",
    [("resnet18", 224, 1.81e9), ("resnet50", 224, 4.09e9), ("resnet20", 32, 40.55e6)],
)
def test_macs_match_published_figures(name, size, expected):
    macs = count_macs(create_model(name), (3, size, size))
    assert abs(macs - expected) / expected < 0.01


def test_zoo_table_holds_every_model_and_its_counts():
    assert sorted(ZOO_STATS) == sorted(list_models())
    for name in list_models():
        assert compute_model_stats(name) == ZOO_STATS[name], name


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnext50_32x4d",
        "resnet50d",
        "resnet20",
        "seresnet18",
        "preact_resnet18",
        "preact_resnet20",
    ],
)
def test_macs_agree_with_torch_flop_counter(name):
    model = create_model(name, num_classes=7).eval()
    size = (3, 32, 32) if get_model_entry(name).family == "cifar" else (3, 64, 64)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *size))
    assert count_macs(model, size) * 2 == counter.get_total_flops()
    rows = summarize(model, size, depth=2).rows
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    for r in rows:
        assert r.macs * 2 == sum(by_module.get(f"{root}.{r.name}", {}).values()), r.name


def test_summary_rows_add_up():
    model = create_model("resnet18", num_classes=10, in_chans=1)
    s = summarize(model, (1, 32, 32), depth=1)
    assert s.total_params == 11_175_370
    assert sum(r.params for r in s.rows) == s.total_params
    assert sum(r.macs for r in s.rows) == s.macs
    assert s.flops == 2 * s.macs
    assert [r.name for r in s.rows][:4] == ["conv1", "bn1", "relu", "maxpool"]
    by_name = {r.name: r for r in s.rows}
    assert by_name["layer4"].output_shape == (1, 512, 1, 1)
    assert by_name["fc"].output_shape == (1, 10)


def test_cli_summary(capsys):
    assert (
        main(
            [
                "summary",
                "resnet18",
                "--in-chans",
                "1",
                "--num-classes",
                "10",
                "--input-size",
                "1",
                "32",
                "32",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Total params:      11,175,370" in out
    assert "layer1.0" in out and "BasicBlock" in out and "FLOPs" in out


def test_cli_models_lists_every_model(capsys):
    assert main(["models", "resnet2*"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "0.27M" in out and "40.55M" in out


def test_cli_models_paper_view(capsys):
    assert main(["models", "--family", "cifar", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "19.4M" in out and "8.75%" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "resnt18"], "did you mean resnet18"),
        (["summary", "resnet18", "--input-size", "3", "0", "16"], "at least 1"),
        (["models", "nothing*"], "no model matches"),
    ],
)
def test_cli_errors_are_clear(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_ends_quietly():
    """`resnetlab models | head -1`: the reader goes away; no traceback, SIGPIPE's status."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "models", "resnet18"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before it writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_summary_says_multiply_adds_and_the_bottleneck_version(capsys):
    assert main(["summary", "resnet50", "--depth", "0"]) == 0
    out = capsys.readouterr().out
    assert "4.09G  (multiply-adds, one image: what the ResNet paper's Table 1 calls FLOPs)" in out
    assert "v1.5 (stride on the 3x3 conv" in out and "--v1" in out
    for name, paper in (("resnet50", "3.8"), ("resnet101", "7.6"), ("resnet152", "11.3")):
        assert main(["summary", name, "--v1", "--depth", "0"]) == 0
        out = capsys.readouterr().out
        assert "Bottleneck:        v1 (stride on the first 1x1" in out
        assert f"Paper (Table 1):   {paper} x 10^9 multiply-adds" in out
        macs = float(out.split("(here ")[1].split(")")[0])
        assert abs(macs - float(paper)) < 0.07, name  # 3.86, 7.57, 11.28
    assert main(["summary", "resnet18", "--depth", "0"]) == 0
    out = capsys.readouterr().out
    assert "Paper (Table 1):   1.8" in out and "Bottleneck" not in out
    assert main(["summary", "resnet18", "--v1"]) == 2
    assert "has no bottleneck blocks" in capsys.readouterr().err
