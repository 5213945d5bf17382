"""The data audit measured: duplicates found and label errors found on data whose problems are
known, against the reference libraries used as their users use them.

The embedded digits (1,797 real 8x8 handwritten digits, labels clean) are written as PNG files
in train/val/test folders, then spoiled with a fixed seed:

- 3 % exact copies: an image saved again (other PNG compression, so other bytes, the same
  pixels) under another name in another split;
- 3 % near copies in another split: half re-encoded as JPEG (quality 75-95), half resized
  (x1.5 to x4, bilinear, bicubic or Lanczos);
- 5 % of the training images moved to another class folder (a wrong label).

Duplicates: the share of the injected (original, copy) pairs that land in one group (exact and
near apart), and the groups that hold no injected pair (false groups) on the spoiled data and on
the clean data; for ``resnetlab audit`` and for imagehash's pHash with a fixed Hamming distance,
used directly (pairs within the distance, grouped).

Label issues: precision and recall of the moved images among the images flagged, for the
audit's confident learning and for ``cleanlab.filter.find_label_issues`` (its defaults, and
``filter_by="low_self_confidence"``) given the same out-of-fold probabilities (the audit's: a
logistic regression on an RBF kernel of the pixels, cross-validated in 5 folds).

Time: ``resnetlab audit DATA --labels`` on the spoiled folder, in its own process, as a user
runs it (median of 3), on this machine's cores.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from resnetlab.audit import audit  # noqa: E402
from resnetlab.audit.labels import find_label_issues  # noqa: E402
from resnetlab.data import load_source  # noqa: E402

SEED = 0
OTHER_SEEDS = (1, 2)  # the spoiling drawn again: the same measures, without the timings
EXACT, NEAR, FLIP = 0.03, 0.03, 0.05
PHASH_THRESHOLDS = (0, 4, 8, 10, 12)  # imagehash: Hamming distances tried, each used directly
SPLITS = ("train", "val", "test")


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def write_digits(root: Path) -> dict[str, dict]:
    """The digits as PNGs, root/SPLIT/CLASS/SPLIT-INDEX.png; per file its split, class, array."""
    source = load_source("digits")
    files = {}
    for split in SPLITS:
        s = source.splits[split]
        for i in range(len(s)):
            label = source.classes[int(s.labels[i])]
            path = root / split / label / f"{split}-{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            a = s.images[i, 0].numpy()
            Image.fromarray(a).save(path)
            files[str(path)] = {"split": split, "label": label, "pixels": a}
    return files


def other_split(split: str, rng) -> str:
    return str(rng.choice([s for s in SPLITS if s != split]))


def near_copy(a: np.ndarray, k: int, rng) -> tuple[Image.Image, str, str]:
    img = Image.fromarray(a)
    if k % 2 == 0:
        q = int(rng.integers(75, 96))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())), ".jpg", f"JPEG quality {q}"
    scale = float(rng.choice([1.5, 2.0, 3.0, 4.0]))
    name = str(rng.choice(["BILINEAR", "BICUBIC", "LANCZOS"]))
    side = round(a.shape[0] * scale)
    return img.resize((side, side), getattr(Image.Resampling, name)), ".png", f"{name} x{scale:g}"


def spoil(root: Path, files: dict[str, dict], seed: int = SEED) -> dict:
    """Inject the copies and the wrong labels; return what was injected."""
    rng = np.random.default_rng(seed)
    paths = sorted(files)
    n = len(paths)
    order = list(rng.permutation(n))
    n_exact, n_near = round(EXACT * n), round(NEAR * n)
    exact_src = [paths[i] for i in order[:n_exact]]
    near_src = [paths[i] for i in order[n_exact : n_exact + n_near]]
    used = set(exact_src) | set(near_src)
    train = [p for p in paths if files[p]["split"] == "train" and p not in used]
    flips = [
        train[i]
        for i in rng.permutation(len(train))[
            : round(FLIP * len([p for p in paths if files[p]["split"] == "train"]))
        ]
    ]
    truth = {"exact": [], "near": [], "flipped": {}}
    for k, src in enumerate(exact_src):
        f = files[src]
        dest = root / other_split(f["split"], rng) / f["label"] / f"copy-{k:03d}.png"
        Image.fromarray(f["pixels"]).save(dest, optimize=True, compress_level=9)
        truth["exact"].append((src, str(dest)))
    for k, src in enumerate(near_src):
        f = files[src]
        img, ext, how = near_copy(f["pixels"], k, rng)
        dest = root / other_split(f["split"], rng) / f["label"] / f"near-{k:03d}{ext}"
        img.save(dest, quality=95) if ext == ".jpg" else img.save(dest)
        truth["near"].append((src, str(dest), how))
    classes = sorted({f["label"] for f in files.values()})
    for src in flips:
        f = files[src]
        wrong = str(rng.choice([c for c in classes if c != f["label"]]))
        dest = root / "train" / wrong / Path(src).name
        shutil.move(src, dest)
        truth["flipped"][str(dest)] = {"given": wrong, "true": f["label"]}
    # A moved original is still the source of nothing: sources and flips do not overlap.
    return truth


def recall(pairs, group_of: dict[str, int]) -> float:
    found = [
        group_of.get(a) is not None and group_of.get(a) == group_of.get(b) for a, b, *_ in pairs
    ]
    return sum(found) / max(1, len(found))


def false_groups(groups: list[list[str]], truth: dict | None) -> int:
    """Groups holding no injected pair (on clean data: every group)."""
    if truth is None:
        return len(groups)
    pairs = {frozenset((a, b)) for a, b, *_ in truth["exact"] + truth["near"]}
    bad = 0
    for g in groups:
        members = set(g)
        if not any(p <= members for p in pairs):
            bad += 1
    return bad


def groups_of(groups: list[list[str]]) -> dict[str, int]:
    return {p: k for k, g in enumerate(groups) for p in g}


def phash_groups(root: Path, threshold: int) -> tuple[list[list[str]], float]:
    """imagehash's pHash, used directly: pairs within ``threshold`` bits, grouped."""
    import imagehash
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t0 = time.perf_counter()
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    hashes = [imagehash.phash(Image.open(p)) for p in paths]
    bits = np.array([int(str(h), 16) for h in hashes], dtype=np.uint64)
    d = np.bitwise_count(bits[:, None] ^ bits[None, :])
    i, j = np.nonzero(np.triu(d <= threshold, 1))
    comp = connected_components(
        coo_matrix((np.ones(len(i)), (i, j)), shape=(len(paths),) * 2), directed=False
    )[1]
    members: dict[int, list[str]] = {}
    for k in set(i.tolist()) | set(j.tolist()):
        members.setdefault(int(comp[k]), []).append(paths[k])
    return list(members.values()), time.perf_counter() - t0


def duplicate_scores(groups, truth, clean_groups, n_images, n_clean) -> dict:
    by = groups_of(groups)
    return {
        "exact_recall": recall(truth["exact"], by),
        "near_recall": recall(truth["near"], by),
        "groups": len(groups),
        "false_groups": false_groups(groups, truth),
        "false_groups_clean": len(clean_groups),
        "false_groups_clean_per_1000": round(1000 * len(clean_groups) / n_clean, 2),
        "images": n_images,
    }


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def label_scores(flagged: set[str], truth: dict) -> dict:
    wrong = set(truth["flipped"])
    tp = len(flagged & wrong)
    p = tp / len(flagged) if flagged else 0.0
    r = tp / len(wrong) if wrong else 0.0
    return {
        "flagged": len(flagged),
        "true_positives": tp,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
    }


def time_cli(root: Path, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "resnetlab", "audit", str(root), "--labels", "--json"],
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - t0)
        if p.returncode not in (0, 1):
            raise RuntimeError(p.stderr)
    inner = json.loads(p.stdout)["seconds"]
    return {
        "wall_seconds_median": statistics.median(times),
        "wall_seconds": times,
        "audit_seconds_last": inner,
    }


def other_seed(work: Path, clean: Path, files: dict, seed: int, cleanlab_issues) -> dict:
    """The audit's duplicates and label issues, and cleanlab's, on another spoiling."""
    spoilt = work / f"digits-{seed}"
    shutil.copytree(clean, spoilt)
    truth = spoil(
        spoilt, {str(spoilt / Path(p).relative_to(clean)): f for p, f in files.items()}, seed
    )
    ours = audit(str(spoilt), labels=True)
    by = groups_of([g["paths"] for g in ours.report["duplicates"]])
    ref = np.array(ours.items.refs)
    y, probs = ours.items.label_index, ours.probs
    mine = {ref[i] for i in find_label_issues(y, probs)}
    theirs = {ref[i] for i in np.nonzero(cleanlab_issues(y, probs))[0]}
    return {
        "exact_recall": recall(truth["exact"], by),
        "near_recall": recall(truth["near"], by),
        "false_groups": false_groups([g["paths"] for g in ours.report["duplicates"]], truth),
        "label_f1_resnetlab_audit": label_scores(mine, truth)["f1"],
        "label_f1_cleanlab": label_scores(theirs, truth)["f1"],
        "label_precision_recall_resnetlab_audit": [
            label_scores(mine, truth)["precision"],
            label_scores(mine, truth)["recall"],
        ],
        "label_model_accuracy": ours.report["label_model"]["accuracy"],
    }


def main() -> None:
    import cleanlab
    import imagehash
    import scipy
    import sklearn
    from cleanlab.filter import find_label_issues as cleanlab_issues

    work = Path(tempfile.mkdtemp(prefix="resnetlab-audit-bench-"))
    try:
        clean, spoilt = work / "clean", work / "digits"
        files = write_digits(clean)
        shutil.copytree(clean, spoilt)
        truth = spoil(
            spoilt, {str(spoilt / Path(p).relative_to(clean)): f for p, f in files.items()}
        )
        n_clean = len(files)
        n_images = sum(1 for p in spoilt.rglob("*") if p.is_file())

        # Duplicates: the audit, on clean and spoilt data.
        ours_clean = audit(str(clean))
        t0 = time.perf_counter()
        ours = audit(str(spoilt), labels=True)
        seconds = time.perf_counter() - t0
        groups = [g["paths"] for g in ours.report["duplicates"]]
        dup = {
            "resnetlab audit": duplicate_scores(
                groups,
                truth,
                [g["paths"] for g in ours_clean.report["duplicates"]],
                n_images,
                n_clean,
            )
        }
        for t in PHASH_THRESHOLDS:
            g, _ = phash_groups(spoilt, t)
            gc, _ = phash_groups(clean, t)
            dup[f"imagehash phash <= {t}"] = duplicate_scores(g, truth, gc, n_images, n_clean)

        # Label issues: the same out-of-fold probabilities for both.
        items = ours.items
        oof = ours.report["label_model"]
        probs, y = ours.probs, items.label_index  # every image is readable here
        ref = np.array(items.refs)
        mine = {ref[i] for i in find_label_issues(y, probs)}
        mine_nr = {ref[i] for i in find_label_issues(y, probs, method="noise_rate")}
        theirs = {ref[i] for i in np.nonzero(cleanlab_issues(y, probs))[0]}
        theirs_sc = {
            ref[i]
            for i in np.nonzero(cleanlab_issues(y, probs, filter_by="low_self_confidence"))[0]
        }
        # The audit's ranking, cut at the top k: precision and recall along it.
        ranked = [r["path"] for r in ours.report["label_issues"]]
        at = {
            k: label_scores(set(ranked[:k]), truth)
            for k in (25, 50, 75, 100)
            if k <= len(ranked) or k == 25
        }
        labels = {
            "resnetlab audit": label_scores(mine, truth),
            "cleanlab.filter.find_label_issues": label_scores(theirs, truth),
            "resnetlab audit, method noise_rate": label_scores(mine_nr, truth),
            "cleanlab, filter_by low_self_confidence": label_scores(theirs_sc, truth),
            # the same method on the same probabilities: how often the two implementations agree
            "agreement_jaccard_noise_rate": jaccard(mine_nr, theirs),
            "agreement_jaccard_self_confidence": jaccard(mine, theirs_sc),
            "audit_top_k": at,
            "label_model": oof,
            "flipped": len(truth["flipped"]),
        }
        timing = time_cli(spoilt)
        timing["in_process_seconds"] = seconds
        again = {
            seed: other_seed(work, clean, files, seed, cleanlab_issues) for seed in OTHER_SEEDS
        }
        payload = {
            "data": {
                "images_clean": n_clean,
                "images_spoilt": n_images,
                "exact_copies": len(truth["exact"]),
                "near_copies": len(truth["near"]),
                "flipped_labels": len(truth["flipped"]),
                "seed": SEED,
            },
            "duplicates": dup,
            "label_issues": labels,
            "other_seeds": again,
            "time": timing,
            "cpu_lscpu": lscpu_model(),
            "cores": os.cpu_count(),
            # the machine is shared: the load says how much of it the timings had
            "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
            "versions": {
                "imagehash": imagehash.__version__,
                "cleanlab": cleanlab.__version__,
                "numpy": np.__version__,
                "scipy": scipy.__version__,
                "scikit-learn": sklearn.__version__,
            },
            "near_copy_kinds": sorted({h for *_, h in truth["near"]}),
        }
        write_result("data_audit", payload)
        print(json.dumps({k: payload[k] for k in ("duplicates", "label_issues", "time")}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
