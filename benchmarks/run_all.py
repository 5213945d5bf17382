"""`make bench`: every benchmark in turn, each in its own process (no state carries over);
each writes benchmarks/results/<name>.json."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    "data_loading.py",
    "train_throughput.py",
    "predict_throughput.py",
    "serve_load.py",
    "data_audit.py",
]

if __name__ == "__main__":
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
