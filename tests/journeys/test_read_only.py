"""A read-only deployment: a trained run folder mounted read-only (Docker's `-v runs:/models:ro`,
Kaggle's /kaggle/input), then predict, evaluate and serve on it, exactly as typed. Nothing is
written into it; the caches go to the user's cache folder; evaluate's files go where --out says."""

import json
import os
import socket
import time
import urllib.request

from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_read_only_deployment(cli, tmp_path, trained_run, read_only):
    models = read_only(trained_run)
    cli.env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    before = sorted(os.listdir(trained_run))
    photo = tmp_path / "digit.png"
    Image.new("L", (32, 32), 200).save(photo)

    # predict: --backend auto measures once and keeps its choice (and the ONNX file) in the
    # user's cache folder, saying so in one line. fp32, as serve runs by default.
    p = cli("predict", models, photo, "--json", "--precision", "fp32")
    rows = json.loads(p.stdout)
    assert rows[0]["error"] is None and len(rows[0]["topk"]) == 5
    note = [line for line in p.stderr.splitlines() if line.startswith("backend ")]
    assert len(note) == 1 and str(tmp_path / "cache" / "resnetlab") in note[0], p.stderr
    assert f"{models} cannot be written" in note[0]
    again = cli("predict", models, photo, "--json", "--precision", "fp32")
    assert json.loads(again.stdout) == rows and "measured once, cached" in again.stderr

    # evaluate: without --out, one line saying what to pass; with it, the files are there.
    p = cli("evaluate", models, ok=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "give --out DIR" in p.stderr
    p = cli("evaluate", models, "--out", "evaluation")
    assert "top-1" in p.stdout
    assert (tmp_path / "evaluation" / "metrics.json").is_file()

    # serve: the same probabilities over HTTP as predict printed.
    port = _free_port()
    server = cli.popen("serve", models, "--port", port)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read()
                time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict",
            data=photo.read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            served = json.loads(r.read())
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err and "measured once, cached" in err, err
    assert [t["label"] for t in served["topk"]] == [t["label"] for t in rows[0]["topk"]]
    for a, b in zip(served["topk"], rows[0]["topk"]):
        assert abs(a["prob"] - b["prob"]) < 1e-5

    assert sorted(os.listdir(trained_run)) == before  # the model folder is as it was
