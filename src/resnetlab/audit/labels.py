"""Images whose label is probably wrong, from out-of-fold predicted probabilities.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021): each class's threshold is the average probability the model
gives that class on the images labelled with it; an image counts as confidently of class j
when its probability of j reaches j's threshold. Those counts, per given label and likely true
label (the confident joint), calibrated to the label counts, say how many images of each given
label truly belong to each other class; that many of them, the ones with the largest margin
p(other) - p(given), are flagged ("prune by noise rate"), except where the model's own top
class is the given label. By default the joint gives only the number of wrong labels, and the
images with the least probability of their given label (self-confidence) are that many; they
are ranked by it.

The probabilities must come from a model that did not train on the image: the held-out folds
of ``train --folds K`` (its ``oof.csv``), or a linear model cross-validated here on features
(a run's, with ``--run``, or the images' own pixels, small).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, DataError

FOLDS = 5
PROB_PREFIX = "p:"  # oof.csv: one column per class, "p:" and its name


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    out = np.ones(k)
    for c in range(k):
        mine = labels == c
        if mine.any():
            out[c] = probs[mine, c].mean()
    return out


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K, K) counts, rows the given label, columns the likely true one, calibrated so each
    row sums to that label's count (and the whole to the number of images)."""
    n, k = probs.shape
    above = probs >= confident_thresholds(labels, probs) - 1e-6
    count = above.sum(1)
    # One class above its threshold: that one; several: the most probable of all.
    guess = np.where(count > 1, probs.argmax(1), above.argmax(1))
    sure = count > 0
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[sure], guess[sure]), 1.0)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1.0))
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    joint = joint / np.maximum(joint.sum(1, keepdims=True), 1e-12) * counts[:, None]
    joint = joint / max(joint.sum(), 1e-12) * n
    return _round_rows(joint)


def _round_rows(m: np.ndarray) -> np.ndarray:
    """Rounded to whole counts, each row keeping its (rounded) total."""
    out = np.floor(m)
    for r in range(len(m)):
        short = int(round(m[r].sum() - out[r].sum()))
        if short > 0:
            order = np.argsort(-(m[r] - out[r]), kind="stable")[:short]
            out[r, order] += 1
    return out.astype(np.int64)


METHODS = ("self_confidence", "noise_rate")


def find_label_issues(
    labels: np.ndarray, probs: np.ndarray, method: str = "self_confidence"
) -> np.ndarray:
    """Indices of the images whose given label is likely wrong, most likely first.

    Both methods take from the confident joint how many images of each given label belong to
    another class, and never flag an image whose most probable class is its given label.
    ``self_confidence`` (the default): as many images as the joint's off-diagonal counts in
    all, those with the lowest probability of their given label. ``noise_rate``: per given
    label i and class j, the joint's count (i, j) of images of label i with the largest
    margin p(j) - p(i) (the paper's "prune by noise rate", cleanlab's default). On the
    benchmark's digits with 5 % of the training labels wrong, the first found more with fewer
    false alarms on the same probabilities: F1 0.89-0.96 against 0.78-0.87 over three
    spoilings (benchmarks/data_audit.py)."""
    if method not in METHODS:
        raise ConfigError(f"label issue method {method!r} is not one of {', '.join(METHODS)}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    if n == 0:
        return np.zeros(0, np.int64)
    joint = confident_joint(labels, probs)
    self_conf = probs[np.arange(n), labels]
    # The model's own answer is the given label (ties go to it): never an issue.
    nudged = probs.copy()
    nudged[np.arange(n), labels] += 1e-6
    agrees = nudged.argmax(1) == labels
    if method == "self_confidence":
        wrong = int(joint.sum() - np.trace(joint))
        order = np.argsort(self_conf, kind="stable")
        return order[~agrees[order]][:wrong]
    flagged = np.zeros(n, dtype=bool)
    for given in range(k):
        rows = np.nonzero(labels == given)[0]
        if len(rows) <= 1:  # a class of one image keeps it
            continue
        for true in range(k):
            m = int(joint[given, true])
            if true == given or m <= 0:
                continue
            margin = probs[rows, true] - probs[rows, given]
            flagged[rows[np.argsort(-margin, kind="stable")[:m]]] = True
    flagged &= ~agrees
    found = np.nonzero(flagged)[0]
    return found[np.argsort(self_conf[found], kind="stable")]


# ------------------------------------------------------------ out-of-fold probabilities


def label_model(dims: int, rows: int, kernel: bool):
    """The model cross-validated on features: a logistic regression on standardised features;
    ``kernel``: on a Nystroem approximation of an RBF kernel over them first (raw pixels are
    not linearly separable; a trained model's features mostly are). On the benchmark's digits
    the kernel raised the out-of-fold accuracy from 0.915 to 0.94 and the F1 of the wrong
    labels found from 0.81-0.87 to 0.89-0.96 (three seeds)."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not kernel:
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    # gamma 1/d: after standardising, two images' squared distance is about 2d
    # 500 components: as good as 1,000 on the digits (F1 within 0.01) in a quarter of the time
    rbf = Nystroem(gamma=1.0 / max(dims, 1), n_components=min(500, rows), random_state=0)
    return make_pipeline(StandardScaler(), rbf, LogisticRegression(C=10.0, max_iter=300))


def cross_validated_probs(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = FOLDS,
    seed: int = 0,
    kernel: bool = True,
) -> tuple[np.ndarray, float, int]:
    """Out-of-fold probabilities of ``label_model`` on ``features``, the folds stratified by
    class; its accuracy against the given labels; the folds used."""
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    folds = max(2, min(folds, len(labels) // 2))
    if len(labels) < 2 * num_classes:
        raise DataError(
            f"finding label issues needs at least 2 images per class to cross-validate; "
            f"this data has {len(labels)} images of {num_classes} classes"
        )
    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One BLAS thread: these fits are small, and threads that wait on each other for a busy
    # core made them 30 times slower on a shared 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # a class smaller than the folds, slow convergence
        for train, held in splitter.split(features, labels):
            model = label_model(features.shape[1], len(train), kernel)
            model.fit(features[train], labels[train])
            p = model.predict_proba(features[held])
            probs[np.ix_(held, model.classes_)] = p
    accuracy = float((probs.argmax(1) == labels).mean())
    return probs, accuracy, folds


def read_oof(path: str | os.PathLike, refs: list[str], classes: list[str]) -> np.ndarray:
    """The probabilities of ``oof.csv`` (``train --folds K``) for each of ``refs``, rows of
    NaN for images it has no row for; its class columns matched to ``classes`` by name."""
    from ..data.curate import _key

    path = Path(path)
    if path.is_dir():
        path = path / "oof.csv"
    if not path.is_file():
        raise DataError(f"--oof {path}: no such file (train --folds K writes OUT/NAME/oof.csv)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or "path" not in rows[0]:
        raise DataError(f"--oof {path}: not an oof.csv (no header with 'path')")
    head = rows[0]
    cols = {h[len(PROB_PREFIX) :]: i for i, h in enumerate(head) if h.startswith(PROB_PREFIX)}
    missing = [c for c in classes if c not in cols]
    if missing:
        raise DataError(
            f"--oof {path}: its classes do not include {', '.join(missing[:5])}; it was written "
            "for other data"
        )
    at = {}
    for r in rows[1:]:
        if r:
            p = Path(r[head.index("path")])
            at[_key(p if p.is_absolute() else path.parent / p)] = r
    out = np.full((len(refs), len(classes)), np.nan)
    for k, ref in enumerate(refs):
        r = at.get(_key(ref))
        if r is not None:
            out[k] = [float(r[cols[c]]) for c in classes]
    if np.isnan(out[:, 0]).all():
        raise DataError(f"--oof {path}: none of its rows is an image of this data")
    return out


def write_oof(path: Path, rows: list[tuple[str, str, int, np.ndarray]], classes: list[str]):
    """``oof.csv``: per held-out image its path, given label, fold and probabilities."""
    import io

    from ..core.files import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "fold", "predicted", *[PROB_PREFIX + c for c in classes]])
    for ref, label, fold, p in rows:
        w.writerow([ref, label, fold, classes[int(np.argmax(p))], *[f"{v:.6f}" for v in p]])
    atomic_write_text(path, buf.getvalue())
    return path
