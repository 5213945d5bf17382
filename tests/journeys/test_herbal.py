"""Herbal medicine: 12 classes with Chinese names, every image format a phone or scanner
gives, the junk a shared folder collects; stats -> train from a torchvision .pth -> evaluate ->
report (in Chromium) -> predict -> export -> serve."""

import json
import os
import shutil
import socket
import time
import urllib.request

import pytest
import torch
import torchvision

from conftest import KINDS, class_colour, noisy, save_in_mode

HERBS = [
    "Radix Astragali 黄芪",
    "枸杞子 (wolfberry)",
    "当归",
    "甘草",
    "人参",
    "金银花",
    "菊花",
    "薄荷",
    "白芍",
    "川芎",
    "茯苓",
    "陈皮",
]
PER_CLASS = 8


def _make_herbs(root):
    for ci, name in enumerate(HERBS):
        d = root / name
        d.mkdir(parents=True)
        for k in range(PER_CLASS):
            save_in_mode(
                noisy(class_colour(ci), seed=ci * 100 + k),
                d / f"照片 {k}",
                KINDS[(ci + k) % len(KINDS)],
            )
    # What shared folders collect: two unreadable files and junk that is skipped unseen.
    (root / "当归" / "empty.jpg").write_bytes(b"")
    (root / "甘草" / "notes.jpg").write_text("not a photo", encoding="utf-8")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / "人参" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "人参" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "菊花" / "._菊花 0.jpg").write_bytes(b"\x00\x05\x16\x07")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_chromium():
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")


def test_herbal_medicine_journey(cli, tmp_path):
    data = tmp_path / "herbs"
    _make_herbs(data)
    pth = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)

    # stats: every class counted, the two unreadable files named, non-zero exit for them.
    p = cli("stats", data, "--json", ok=False)
    report = json.loads(p.stdout)
    assert list(report["classes"]) == sorted(HERBS)
    assert report["num_images"] == 12 * PER_CLASS
    assert sorted(os.path.basename(b["path"]) for b in report["bad_files"]) == [
        "empty.jpg",
        "notes.jpg",
    ]
    assert "Glyph" not in p.stderr

    # train with the defaults: 2 of 98 files unreadable is above the 1 % default; one error
    # naming them and the flag, nothing written.
    argv = [
        "train",
        "--data",
        data,
        "--model",
        "resnet18",
        "--weights",
        pth,
        "--input-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--name",
        "herbs",
    ]
    p = cli(*argv, ok=False)
    assert "empty.jpg" in p.stderr and "--max-bad-fraction" in p.stderr
    assert not (tmp_path / "runs" / "herbs").exists()
    p = cli(*argv, "--max-bad-fraction", "0.05")
    said = p.stdout + p.stderr
    assert f"weights {pth}: a new classifier for 12 classes" in said
    assert "12 classes" in said and said.count("notes.jpg") == 1
    run = tmp_path / "runs" / "herbs"
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == sorted(HERBS)

    # evaluate: the run's test split, Chinese names in every output form.
    p = cli("evaluate", run, "--json")
    ev = json.loads(p.stdout)
    assert ev["classes"] == sorted(HERBS) and set(ev["per_class"]) == set(HERBS)
    assert "Glyph" not in p.stderr
    p = cli("evaluate", run)
    assert "Radix Astragali 黄芪" in p.stdout and "枸杞子 (wolfberry)" in p.stdout

    # report: written, no missing glyph while drawing, and rendered in Chromium.
    p = cli("report", run)
    assert "Glyph" not in p.stderr and "missing from font" not in p.stderr
    page = run / "report.html"
    assert "枸杞子 (wolfberry)" in page.read_text(encoding="utf-8")
    _need_chromium()
    from browser import chrome_driver

    with chrome_driver() as d:
        d.get(page.as_uri())
        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        # The page's fonts hold every Chinese character it shows (no boxes).
        assert d.execute_script(
            "return document.fonts.check('16px \"Noto Sans CJK SC\"', '黄芪枸杞子当归')"
        )
        assert "黄芪" in d.find_element("tag name", "body").text
        d.save_screenshot(str(tmp_path / "report.png"))

    # predict a folder: a row per file, the two bad ones with an error, exit status 1.
    p = cli("predict", run, data, "--json", "--topk", "3", ok=False)
    rows = json.loads(p.stdout)
    assert len(rows) == 12 * PER_CLASS + 2
    bad = [r for r in rows if r["error"]]
    assert sorted(os.path.basename(r["path"]) for r in bad) == ["empty.jpg", "notes.jpg"]
    good = [r for r in rows if not r["error"]]
    assert all(r["topk"][0]["label"] in HERBS and len(r["topk"]) == 3 for r in good)

    # export, verified against PyTorch.
    p = cli("export", run, "--format", "onnx", "--verify")
    assert "verified" in p.stdout and (run / "model.onnx").is_file()

    # serve: a photo from the collection gets its Chinese label back over HTTP.
    port = _free_port()
    # evaluate measured --backend auto above; serve (fp32) would measure it again at start-up,
    # which is not what the Chinese label over HTTP is checked for.
    server = cli.popen("serve", run, "--port", port, "--backend", "torch")
    try:
        banner = server.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner
        photo = next((data / "菊花").glob("照片 0.*"))
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=photo.read_bytes(), method="POST"
        )
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        assert answer["topk"][0]["label"] in HERBS and len(answer["topk"]) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)
