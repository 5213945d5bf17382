"""The originals: MNIST's idx files and CIFAR-10's python batches as the tutorials download
them, one epoch each at their own sizes; a hostile pickle in place of a CIFAR batch and of a
.pth runs nothing and gets one clear line."""

import pickle

from datagen import make_cifar, make_mnist

TINY = [
    "--model",
    "resnet20",
    "--model-kwargs",
    "widths=[4,8,8]",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--num-workers",
    "0",
]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_mnist_at_28_pixels(cli, tmp_path):
    make_mnist(tmp_path / "mnist", n_train=80, n_test=20, gz=True)
    p = cli(
        "train",
        "--data",
        f"mnist:{tmp_path / 'mnist'}",
        *TINY,
        "--input-size",
        "28",
        "--name",
        "mnist",
    )
    assert "10 classes" in p.stderr
    run = tmp_path / "runs" / "mnist"
    p = cli("evaluate", run, "--json", "--backend", "torch")  # the data, not the backend
    assert '"num_samples": 20' in p.stdout


def test_cifar10_batches(cli, tmp_path):
    make_cifar(tmp_path / "cifar", 10, per_batch=16)
    cli("train", "--data", f"cifar10:{tmp_path / 'cifar'}", *TINY, "--name", "c10")
    assert (tmp_path / "runs" / "c10" / "model.safetensors").is_file()


def test_hostile_pickles_run_nothing(cli, tmp_path):
    marker = tmp_path / "pwned"
    make_cifar(tmp_path / "cifar", 10, per_batch=16)
    with open(tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(marker), b"labels": []}, f)
    p = cli("train", "--data", f"cifar10:{tmp_path / 'cifar'}", *TINY, ok=False)
    assert not marker.exists()
    assert len(p.stderr.strip().splitlines()) == 1 and "data_batch_3" in p.stderr

    evil = tmp_path / "resnet18.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": Evil(marker)}, f)
    p = cli("train", "--model", "resnet18", "--weights", evil, "--epochs", "1", ok=False)
    assert not marker.exists()
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and str(evil) in err
    assert "weights_only" not in err
