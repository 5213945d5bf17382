"""The data audit: exact and near duplicates grouped, leaks across splits and label conflicts
named, files to leave out that train --exclude honours, likely wrong labels ranked as
cleanlab ranks them on the same probabilities, on folders, listings and the original MNIST
and CIFAR files, with Chinese class names."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen import write_idx
from resnetlab.audit import audit
from resnetlab.audit.labels import confident_joint, find_label_issues
from resnetlab.audit.scan import grey_square, phash_bits
from resnetlab.cli.commands import main
from resnetlab.core.errors import DataError
from resnetlab.data import DataConfig, build_pipeline
from resnetlab.data.curate import apply_exclude, apply_relabel

CLASSES = {"猫": (200, 60, 40), "狗": (40, 160, 60), "鸟": (50, 70, 210)}
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
    "--no-precise-bn",
]


def pattern(rng, colour, size=32) -> Image.Image:
    """A smooth random field tinted with the class colour: every image its own, none a copy
    of another (JPEG and resizing keep it recognisable, as they keep a photo)."""
    field = rng.random((5, 5))
    field = (
        np.asarray(
            Image.fromarray((field * 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            np.float32,
        )
        / 255.0
    )
    rgb = np.clip(np.array(colour)[None, None] * (0.5 + field[..., None]), 0, 255)
    return Image.fromarray(rgb.astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def messy_folder(root: Path, per_class=(10, 3, 3), seed: int = 0) -> dict[str, Path]:
    """train/val/test of three Chinese-named classes, and the copies an audit must find."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_class):
        for name, colour in CLASSES.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pattern(rng, colour).save(root / split / name / f"{split}_{k}.png")
    cat, dog, bird = (root / "train" / c for c in CLASSES)
    copies = {
        # the same pixels, other bytes, in the test split: a leak
        "exact_leak": root / "test" / "猫" / "copy of train_0.png",
        # re-encoded as JPEG, in val: a near leak
        "near_leak": root / "val" / "狗" / "again train_1.jpg",
        # twice the size, same class and split: copies within
        "resized": bird / "large train_2.png",
        # the same picture in two classes: a label conflict
        "conflict": dog / "cat_3.png",
    }
    Image.open(cat / "train_0.png").save(copies["exact_leak"], compress_level=9, optimize=True)
    jpeg(Image.open(dog / "train_1.png").convert("RGB")).save(copies["near_leak"], quality=95)
    Image.open(bird / "train_2.png").resize((64, 64), Image.Resampling.BICUBIC).save(
        copies["resized"]
    )
    Image.open(cat / "train_3.png").save(copies["conflict"])
    return copies


def _groups(report) -> dict[str, dict]:
    """Each group under the name of its copy (the file that is not an original)."""
    out = {}
    for g in report["duplicates"]:
        for p in g["paths"]:
            name = Path(p).name
            if not name.startswith(("train_", "val_", "test_")):
                out[name] = g
    return out


def test_phash_is_imagehash_phash():
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(1)
    for k in range(8):
        img = pattern(rng, (120, 90, 200), size=24 + 8 * k)
        ours = int(phash_bits(grey_square(img)[None])[0])
        assert ours == int(str(imagehash.phash(img)), 16)


def test_duplicate_groups_leaks_and_conflicts(tmp_path):
    copies = messy_folder(tmp_path / "messy")
    report = audit(str(tmp_path / "messy")).report
    by_copy = _groups(report)
    assert len(report["duplicates"]) == 4  # nothing else: the originals are all different
    g = by_copy[copies["exact_leak"].name]
    assert (g["kind"], g["status"], g["classes"]) == ("exact", "leak", ["猫"])
    assert g["splits"] == ["train", "test"]
    assert g["exclude"] == [str(copies["exact_leak"])]  # the training copy is kept
    g = by_copy[copies["near_leak"].name]
    assert (g["kind"], g["status"], g["splits"]) == ("near", "leak", ["train", "val"])
    g = by_copy[copies["resized"].name]
    assert (g["kind"], g["status"], g["leak"], g["conflict"]) == ("near", "within", False, False)
    assert len(g["exclude"]) == 1
    g = by_copy[copies["conflict"].name]
    assert (g["kind"], g["status"], g["classes"]) == ("exact", "conflict", ["狗", "猫"])
    assert sorted(g["exclude"]) == sorted(g["paths"])  # neither label can be trusted
    # the worst first: the conflict, then the leaks, then the copies within
    assert [x["status"] for x in report["duplicates"]] == ["conflict", "leak", "leak", "within"]
    exact_only = audit(str(tmp_path / "messy"), near=False).report
    assert {g["kind"] for g in exact_only["duplicates"]} == {"exact"}
    assert len(exact_only["duplicates"]) == 2


def test_a_clean_folder_has_no_groups(tmp_path):
    for copy in messy_folder(tmp_path / "d").values():  # the folder without its copies
        copy.unlink()
    assert audit(str(tmp_path / "d")).report["duplicates"] == []


def test_cli_table_json_page_and_exclusion_round_trip(tmp_path, capsys, caplog):
    data = tmp_path / "messy"
    copies = messy_folder(data)
    exclude = tmp_path / "exclude.txt"
    page = tmp_path / "audit.html"
    before = sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*"))
    assert (
        main(["audit", str(data), "--json", "--write-exclude", str(exclude), "--html", str(page)])
        == 1
    )  # leaks and a conflict: something to act on
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert {"paths", "kind", "splits", "classes"} <= set(report["duplicates"][0])
    assert "_index" not in report["duplicates"][0]
    assert sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*")) == before  # untouched
    text = exclude.read_text(encoding="utf-8")
    listed = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(listed) == 5  # one copy of each of three groups, both of the conflict
    assert "messy/test/猫/copy of train_0.png" in listed  # relative to the file's folder
    assert "messy/train/鸟/large train_2.png" not in listed  # the larger copy is kept
    html = page.read_text(encoding="utf-8")
    assert html.count("<img") == 8 and "猫" in html and "http" not in html.replace("http-equiv", "")
    # written once: a second audit refuses to overwrite it
    assert main(["audit", str(data), "--write-exclude", str(exclude)]) == 2
    assert "exists" in capsys.readouterr().err

    # train --exclude leaves them out of every split
    pipe = build_pipeline(DataConfig(data=str(data), exclude=str(exclude), num_workers=0))
    kept = {str(p) for s in pipe.source.splits.values() for p in s.paths}
    assert str(copies["exact_leak"]) not in kept and str(copies["near_leak"]) not in kept
    assert len(pipe.source.splits["test"]) == 9 and len(pipe.source.splits["val"]) == 9
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--exclude",
                str(exclude),
                *TINY,
                "--out",
                str(tmp_path / "runs"),
                "--name",
                "clean",
                "--quiet",
            ]
        )
        == 0
    )
    assert "5 image(s) left out" in caplog.text
    config = (tmp_path / "runs" / "clean" / "config.yaml").read_text(encoding="utf-8")
    assert "exclude.txt" in config
    # evaluate tests the run on the test split as it trained: the leaked copy stays out
    r = main(["evaluate", str(tmp_path / "runs" / "clean"), "--json", "--backend", "torch"])
    assert r == 0 and json.loads(capsys.readouterr().out)["num_samples"] == 9


def test_exclude_file_naming_nothing_of_the_data_is_refused(tmp_path):
    messy_folder(tmp_path / "d")
    wrong = tmp_path / "ex.txt"
    wrong.write_text("elsewhere/a.png\nelsewhere/b.png\n", encoding="utf-8")
    from resnetlab.data import load_source

    source = load_source(str(tmp_path / "d"))
    with pytest.raises(DataError, match="none of its 2 image"):
        apply_exclude(source, wrong)


def _flip(root: Path, names: list[tuple[str, str, str]]) -> list[Path]:
    """Move training images to another class folder: wrong labels."""
    moved = []
    for src_class, k, dst_class in names:
        src = root / "train" / src_class / f"train_{k}.png"
        dst = root / "train" / dst_class / f"moved_{src_class}_{k}.png"
        src.rename(dst)
        moved.append(dst)
    return moved


def test_label_issues_found_and_relabel_round_trip(tmp_path, capsys):
    data = tmp_path / "d"
    messy_folder(data, per_class=(24, 4, 4), seed=3)
    for p in data.rglob("*"):  # the copies are not this test's business
        if p.is_file() and not p.name.startswith(("train_", "val_", "test_")):
            p.unlink()
    moved = _flip(data, [("猫", "5", "狗"), ("鸟", "7", "猫")])
    relabel = tmp_path / "relabel.csv"
    main(["audit", str(data), "--labels", "--json", "--write-relabel", str(relabel)])
    report = json.loads(capsys.readouterr().out)
    issues = report["label_issues"]
    assert {"path", "given", "suggested", "score"} <= set(issues[0])
    found = {Path(r["path"]).name: r for r in issues}
    assert found["moved_猫_5.png"]["suggested"] == "猫" and found["moved_猫_5.png"]["given"] == "狗"
    assert found["moved_鸟_7.png"]["suggested"] == "鸟"
    assert len(issues) <= 4  # the two, and at most as many false alarms
    scores = [r["score"] for r in issues]
    assert scores == sorted(scores, reverse=True)
    rows = relabel.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "path,given,label,probability"
    from resnetlab.data import load_source

    source = load_source(str(data))
    fixed, changed = apply_relabel(source, relabel)
    assert changed == len(issues)
    train = fixed.splits["train"]
    for path in moved:
        i = train.paths.index(path)
        assert fixed.classes[int(train.labels[i])] == found[path.name]["suggested"]
    # the file checks the label it says an image has now
    relabel.write_text(
        f"path,given,label\n{moved[0].relative_to(tmp_path)},鸟,猫\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match="written for other data"):
        apply_relabel(source, relabel)


def test_ranking_agrees_with_cleanlab_on_the_same_probabilities():
    cleanlab = pytest.importorskip("cleanlab")
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    n, k = 800, 6
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k)) + 3.0 * np.eye(k)[true]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    wrong = rng.choice(n, 48, replace=False)
    given[wrong] = (true[wrong] + rng.integers(1, k, len(wrong))) % k
    # the paper's prune by noise rate: cleanlab's default filter
    ours = set(find_label_issues(given, probs, method="noise_rate").tolist())
    theirs = set(np.nonzero(cleanlab_issues(given, probs))[0].tolist())
    assert len(ours & theirs) / len(ours | theirs) >= 0.95, cleanlab.__version__
    # the default: as many as the calibrated confident joint counts, ranked by self-confidence
    found = find_label_issues(given, probs)
    calibrated = num_label_issues(given, probs, estimation_method="off_diagonal_calibrated")
    joint = confident_joint(given, probs)
    assert abs(int(joint.sum() - np.trace(joint)) - calibrated) <= 1
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    disagree = probs.argmax(1) != given
    theirs_ranked = [i for i in np.argsort(quality, kind="stable") if disagree[i]][: len(found)]
    assert found.tolist() == theirs_ranked
    assert len(set(found) & set(wrong)) / len(wrong) >= 0.8


def test_listings_with_chinese_labels(tmp_path):
    root = tmp_path / "listing"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    rows = []
    for k in range(12):
        name = list(CLASSES)[k % 3]
        pattern(rng, CLASSES[name]).save(root / "images" / f"{k}.png")
        rows.append((f"images/{k}.png", name, "train" if k < 9 else "test"))
    rows.append(("images/0.png", "狗", "test"))  # the same file under another label, in test
    (root / "labels.csv").write_text(
        "path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows), encoding="utf-8"
    )
    (root / "labels.jsonl").write_text(
        "".join(
            json.dumps({"path": p, "label": c, "split": s}, ensure_ascii=False) + "\n"
            for p, c, s in rows
        ),
        encoding="utf-8",
    )
    for kind in ("csv", "jsonl"):
        report = audit(f"{kind}:{root / f'labels.{kind}'}").report
        (g,) = report["duplicates"]
        assert (g["kind"], g["status"], g["classes"]) == ("exact", "leak+conflict", ["狗", "猫"])
        assert g["splits"] == ["train", "test"]


def test_mnist_originals_in_memory_and_their_exclude_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    train = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    test[3] = train[10]  # a training digit in the test set
    write_idx(folder / "train-images-idx3-ubyte", train)
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(40) % 10).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", test)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.r_[0, 1, 2, 0, 4:10].astype(np.uint8))
    data = f"mnist:{folder}"
    exclude = tmp_path / "ex.txt"
    assert main(["audit", data, "--write-exclude", str(exclude)]) == 1
    out = capsys.readouterr().out
    assert "leak across train / test" in out and "test#3" in out
    line = [x for x in exclude.read_text().splitlines() if x.startswith("test#")]
    assert line == [f"test#3\tpixels={line[0].split('pixels=')[1]}"]
    from resnetlab.data import load_source

    source = load_source(data)
    kept, n = apply_exclude(source, exclude)
    assert n == 1 and len(kept.splits["test"]) == 9
    # written for other splits (another seed): refused, not applied to other images
    exclude.write_text("test#4\tpixels=" + line[0].split("pixels=")[1] + "\n")
    with pytest.raises(DataError, match="other splits"):
        apply_exclude(source, exclude)


def test_cifar10_batches_with_chinese_names(tmp_path):
    rng = np.random.default_rng(0)
    sub = tmp_path / "cifar" / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    names = ["飞机", "汽车", "鸟", "猫", "鹿", "狗", "青蛙", "马", "船", "卡车"]
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
        batches.append(data)
        labels = list(range(8))
        if name == "data_batch_2":
            data[0] = batches[0][1]  # class 1 again, under class 0: a label conflict
        with open(sub / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with open(sub / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f, protocol=2)
    report = audit(f"cifar10:{tmp_path / 'cifar'}", val_ratio=0.0).report
    (g,) = report["duplicates"]
    assert g["kind"] == "exact" and g["conflict"] and g["classes"] == ["汽车", "飞机"]


def test_folds_keep_out_of_fold_probabilities_for_the_audit(tmp_path, capsys):
    data = tmp_path / "d"
    for copy in messy_folder(data, per_class=(8, 2, 2)).values():
        copy.unlink()
    out = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                *TINY,
                "--folds",
                "2",
                "--out",
                str(out),
                "--name",
                "cv",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    oof = out / "cv" / "oof.csv"
    assert f"--oof {oof}" in printed
    import csv

    rows = list(csv.DictReader(oof.open(encoding="utf-8")))
    # every training and validation image once (the test split is in no fold), held out once
    assert len(rows) == 30 and len({r["path"] for r in rows}) == 30
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert {r["label"] for r in rows} == set(CLASSES)
    for r in rows:
        assert abs(sum(float(r[f"p:{c}"]) for c in CLASSES) - 1) < 1e-4
    summary = json.loads((out / "cv" / "kfold.json").read_text(encoding="utf-8"))
    assert summary["oof"] == str(oof)
    report = audit(str(data), oof=str(oof)).report
    assert report["label_model"]["source"] == "oof" and report["label_model"]["images"] == 30


def test_many_lookalikes_tighten_the_phash_distance(tmp_path, monkeypatch):
    # Thousands of handwritten digits make millions of pairs within 16 bits; the distance
    # tightens until the pairs to compare fit the budget (here made tiny), and says so.
    import resnetlab.audit.duplicates as D
    from resnetlab.audit.core import format_audit

    copies = messy_folder(tmp_path / "d")
    monkeypatch.setattr(D, "CANDIDATE_BUDGET", 3)
    result = audit(str(tmp_path / "d"))
    s = result.report["duplicate_summary"]
    assert s["near_bits"] < D.NEAR_BITS
    assert D.affordable_bits(result.items.phash, 16, budget=3) == s["near_bits"]
    assert "pHash pairs within" in format_audit(result.report)
    names = {Path(p).name for g in result.report["duplicates"] for p in g["paths"]}
    assert copies["exact_leak"].name in names  # exact copies do not depend on it


def test_audit_page_in_chromium_draws_thumbnails_and_chinese(tmp_path):
    import shutil

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium not installed (make test installs it)")
    from browser import chrome_driver
    from resnetlab.audit.page import write_page

    messy_folder(tmp_path / "d")
    page = write_page(audit(str(tmp_path / "d")), tmp_path / "audit.html")
    pages = [page]
    if importlib.util.find_spec("webdataset"):  # the same page for wds: shards, read from them
        from resnetlab.data import write_shards

        write_shards(str(tmp_path / "d"), tmp_path / "wds", shard_size_bytes=20_000)
        pages.append(write_page(audit(f"wds:{tmp_path / 'wds'}"), tmp_path / "wds.html"))
    with chrome_driver() as driver:
        for shown in pages[::-1]:  # the folder's page stays loaded for the font check
            driver.get(shown.as_uri())
            sizes = driver.execute_script(
                "return [...document.images].map(i => [i.complete, i.naturalWidth])"
            )
            assert len(sizes) == 8 and all(done and w > 0 for done, w in sizes), shown
        driver.execute_cdp_cmd("DOM.enable", {})
        driver.execute_cdp_cmd("CSS.enable", {})
        root = driver.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        nodes = driver.execute_cdp_cmd(
            "DOM.querySelectorAll", {"nodeId": root, "selector": "figcaption"}
        )["nodeIds"]
        used = set()
        for node in nodes:
            fonts = driver.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})
            used |= {f["familyName"] for f in fonts["fonts"]}
    assert any("CJK" in name for name in used), used  # the class names, not boxes


def _stream_names(shards, channels: int = 3, classes: int = 3) -> dict[str, int]:
    """Each sample a split of shards gives training, by name, with the label it trains with."""
    from resnetlab.data.stream import ShardLoader
    from resnetlab.data.transforms import file_transform

    loader = ShardLoader(
        shards,
        4,
        shuffle=False,
        drop_last=False,
        transform=file_transform("small", 8, train=False),
        channels=channels,
        num_classes=classes,
        return_keys=True,
    )
    return {n: int(y) for _, ys, names in loader for n, y in zip(names, ys)}


def test_wds_shards_audited_excluded_and_relabelled_as_they_stream(tmp_path, capsys, caplog):
    pytest.importorskip("webdataset")
    from resnetlab.data import load_source, write_shards

    data = tmp_path / "messy"
    messy_folder(data)
    shards = tmp_path / "wds"
    write_shards(str(data), shards, shard_size_bytes=20_000)  # several shards per split
    assert len(list(shards.glob("train-*.tar"))) > 1
    folder = audit(str(data)).report
    report = audit(f"wds:{shards}").report
    # the same groups as the folder the shards were written from, named SHARD:KEY
    assert report["num_images"] == folder["num_images"] == 52
    assert [g["status"] for g in report["duplicates"]] == [
        g["status"] for g in folder["duplicates"]
    ]
    assert [g["classes"] for g in report["duplicates"]] == [
        g["classes"] for g in folder["duplicates"]
    ]
    leak = next(g for g in report["duplicates"] if g["splits"] == ["train", "test"])
    assert leak["status"] == "leak" and ".tar:test_" in leak["exclude"][0]

    exclude, page = tmp_path / "exclude.txt", tmp_path / "audit.html"
    args = ["audit", f"wds:{shards}", "--write-exclude", str(exclude), "--html", str(page)]
    assert main(args) == 1
    capsys.readouterr()
    listed = [x for x in exclude.read_text(encoding="utf-8").splitlines() if x[:1] not in "#"]
    assert len(listed) == 5 and all(x.startswith("wds/") and ".tar:" in x for x in listed)
    assert page.read_text(encoding="utf-8").count("<img") == 8  # thumbnails read from shards

    # train --exclude: the stream leaves them out; the shards are not touched
    before = sorted((p, p.stat().st_mtime_ns) for p in shards.iterdir())
    pipe = build_pipeline(DataConfig(data=f"wds:{shards}", exclude=str(exclude), num_workers=0))
    gone = {str(shards / x.removeprefix("wds/")) for x in listed}
    seen = {n for s in pipe.source.splits.values() for n in _stream_names(s.shards)}
    assert len(seen) == 52 - 5 and not seen & gone
    assert sum(len(s) for s in pipe.source.splits.values()) == 47
    out = ["--out", str(tmp_path / "runs"), "--name", "clean", "--quiet"]
    assert main(["train", "--data", f"wds:{shards}", "--exclude", str(exclude), *TINY, *out]) == 0
    assert "5 image(s) left out" in caplog.text
    assert sorted((p, p.stat().st_mtime_ns) for p in shards.iterdir()) == before

    # train --relabel: the stream gives the sample the label the file names
    source = load_source(f"wds:{shards}")
    name = next(iter(_stream_names(source.splits["train"].shards)))
    given = source.classes[_stream_names(source.splits["train"].shards)[name]]
    other = next(c for c in source.classes if c != given)
    relabel = tmp_path / "relabel.csv"
    ref = Path(name).relative_to(tmp_path)
    relabel.write_text(f"path,given,label\n{ref},{given},{other}\n", encoding="utf-8")
    fixed, changed = apply_relabel(source, relabel)
    assert changed == 1
    assert _stream_names(fixed.splits["train"].shards)[name] == source.classes.index(other)
    relabel.write_text(f"path,given,label\n{ref},{other},{given}\n", encoding="utf-8")
    with pytest.raises(DataError, match="written for other data"):
        apply_relabel(source, relabel)
