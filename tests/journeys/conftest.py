"""The journeys run the real `resnetlab` command in a subprocess, as a user types it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class CLI:
    """``cli("train", ...)`` runs ``python -m resnetlab train ...`` and keeps what it printed."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "resnetlab", *map(str, args)]

    def __call__(self, *args, ok: bool | None = True, timeout: float = 300):
        p = subprocess.run(
            self.argv(*args),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        # A user never sees a traceback, whatever went wrong on their side.
        assert "Traceback" not in p.stderr, p.stderr
        if ok is True:
            assert p.returncode == 0, f"{args}: {p.stdout}\n{p.stderr}"
        elif ok is False:
            assert p.returncode != 0, f"{args} should have failed: {p.stdout}"
        return p

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args),
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.fixture
def cli(tmp_path) -> CLI:
    return CLI(tmp_path)


def class_colour(ci: int) -> tuple[int, int, int]:
    """A distinct, learnable colour per class."""
    return ((37 * ci) % 200 + 40, (91 * ci + 60) % 200 + 40, (53 * ci + 120) % 200 + 40)


def noisy(colour, size=(28, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.empty((size[1], size[0], 3), dtype=np.int16)
    base[:] = colour
    return np.clip(base + rng.integers(-12, 12, size=base.shape), 0, 255).astype(np.uint8)


def save_in_mode(arr: np.ndarray, path_stem: Path, kind: str) -> Path:
    """One image in one of the formats and modes photo collections hold."""
    img = Image.fromarray(arr)
    if kind == "jpeg":
        path = path_stem.with_suffix(".jpg")
        img.save(path, quality=95)
    elif kind == "png":
        path = path_stem.with_suffix(".png")
        img.save(path)
    elif kind == "palette":
        path = path_stem.with_suffix(".png")
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "16bit":
        path = path_stem.with_suffix(".png")
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path)
    elif kind == "cmyk":
        path = path_stem.with_suffix(".jpg")
        img.convert("CMYK").save(path, quality=95)
    elif kind == "rgba":
        path = path_stem.with_suffix(".png")
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path)
    elif kind == "gif":
        path = path_stem.with_suffix(".gif")
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "tiff":
        path = path_stem.with_suffix(".tiff")
        img.save(path)
    else:
        raise ValueError(kind)
    return path


KINDS = ("jpeg", "png", "palette", "16bit", "cmyk", "rgba", "gif", "tiff")
