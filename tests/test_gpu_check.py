"""benchmarks/gpu_check.py on a machine without CUDA: one line saying so, exit 0."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


def test_without_cuda_one_line_and_exit_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU seen even where there is one
    out = tmp_path / "gpu.json"
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device here")
    assert not out.exists()  # nothing measured, nothing written
