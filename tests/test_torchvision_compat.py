"""Our ImageNet family is torchvision's, weight for weight."""

import pytest
import torch
import torchvision

from resnetlab import create_model

TORCHVISION_NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_state_dicts_interchange_and_outputs_agree(name):
    theirs = getattr(torchvision.models, name)(num_classes=10).eval()
    ours = create_model(name, num_classes=10).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)

    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)

    fresh = create_model(name, num_classes=10).eval()
    theirs.load_state_dict(fresh.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), fresh(x), atol=1e-5, rtol=1e-5)


def test_bn_running_stats_survive_the_round_trip():
    theirs = torchvision.models.resnet18().train()
    theirs(torch.randn(4, 3, 64, 64))  # move the running statistics away from 0/1
    ours = create_model("resnet18")
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean)
