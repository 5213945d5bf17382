"""Print the package sources pip is configured with (its config files and PIP_* variables) as
uv's flags, so `make` installs with uv from exactly where pip would: extra indexes, find-links
folders and constraint files (a machine's local mirror included)."""

import shlex
import subprocess
import sys

FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def main() -> int:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    flags: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name not in FLAGS:
            continue
        for item in shlex.split(value.strip().strip("'\"")):
            pair = [FLAGS[name], item]
            if pair not in (flags[i : i + 2] for i in range(0, len(flags), 2)):
                flags += pair
    print(shlex.join(flags))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
