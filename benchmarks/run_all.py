"""`make bench`: every benchmark in turn; each writes benchmarks/results/<name>.json."""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["data_loading.py", "train_throughput.py", "predict_throughput.py", "serve_load.py"]

if __name__ == "__main__":
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        sys.argv = [str(HERE / name)]
        runpy.run_path(str(HERE / name), run_name="__main__")
