"""Exact and near duplicates, grouped, and what each group means for training.

Exact: the same decoded pixels (a PNG and its re-saved copy, a file copied under another
name). Near: a perceptual hash (pHash, 64 bits) within ``NEAR_BITS`` of each other proposes a
pair, and the pair is kept only when the two grey 16x16 thumbnails correlate at least
``NEAR_SIMILARITY`` and the images have the same shape (aspect ratio): a re-encoded JPEG or a
resized copy passes both, two different photos of a similar scene rarely pass the second.
A pHash threshold alone has to choose between missing re-encoded copies and grouping images
that only look alike (``benchmarks/data_audit.py`` measures both).

A group is ``within`` one class and split (redundant copies), a ``leak`` (it spans train, val
and test: the held-out score is measured on images the model trained on), a ``conflict`` (it
spans classes: the same picture under two labels) or both.
"""

from __future__ import annotations

import re

import numpy as np

from ..data.sources import SPLITS
from .scan import Items

NEAR_BITS = 16  # candidate pairs: pHashes differing in at most this many of 64 bits
NEAR_SIMILARITY = 0.9925  # confirmed: thumbnails' (blur-matched) correlation at least this
BLURS = (0.5, 0.8, 1.2)  # Gaussian sigmas, in pixels of the 16x16 thumbnail
ASPECT_TOLERANCE = 0.1  # and aspect ratios within 10 % of each other
_BLOCK_ELEMENTS = 4_000_000  # pairs compared at once (memory: 8 bytes each)
_PAIR_CHUNK = 50_000  # candidate pairs confirmed at once (their thumbnails: 2 KB each)
FIRST_LOOK = 0.9  # plain correlation a candidate pair needs before it is blur-matched
CANDIDATE_BUDGET = 2_000_000  # candidate pairs at most: above, the pHash distance tightens


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def _blocks(hashes: np.ndarray):
    """(row offset, distances of rows start.. to every later hash) in bounded blocks."""
    n = len(hashes)
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        yield start, popcount(hashes[start : start + rows, None] ^ hashes[None, start:])


def affordable_bits(hashes: np.ndarray, max_bits: int, budget: int | None = None) -> int:
    """The largest distance up to ``max_bits`` whose pairs number at most ``budget`` (default
    ``CANDIDATE_BUDGET``; images that look much alike, handwritten digits say, make many pairs
    within 16 bits)."""
    budget = CANDIDATE_BUDGET if budget is None else budget
    counts = np.zeros(65, np.int64)
    for _, d in _blocks(hashes):
        upper = np.arange(d.shape[1])[None, :] > np.arange(d.shape[0])[:, None]
        counts += np.bincount(d[upper].ravel(), minlength=65)[:65]
    within = np.cumsum(counts)
    fits = [t for t in range(max_bits + 1) if within[t] <= budget]
    return fits[-1] if fits else 0


def hamming_pairs(hashes: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of 64-bit hashes within ``max_bits``, compared in blocks."""
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, d in _blocks(hashes):
        ii, jj = np.nonzero(d <= max_bits)
        ii, jj = ii + start, jj + start
        keep = jj > ii
        found_i.append(ii[keep])
        found_j.append(jj[keep])
    return np.concatenate(found_i), np.concatenate(found_j)


def _unit(t: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length (a flat row stays 0): their dot product is the
    pixels' correlation, blind to brightness and contrast."""
    t = t.reshape(len(t), -1).astype(np.float64)
    t = t - t.mean(1, keepdims=True)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    return np.divide(t, norm, out=np.zeros_like(t), where=norm > 1e-3)


def blur_matched_similarity(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Correlation of the thumbnails of each pair (i, j), the sharper of the two blurred as
    much as makes them most alike (Gaussian, sigma in ``BLURS``): resizing a copy blurs it by
    its interpolation (bilinear more than Lanczos), which plain correlation takes for a
    difference; blurring does not make two different images alike."""
    from scipy.ndimage import gaussian_filter

    used, local = np.unique(np.concatenate([i, j]), return_inverse=True)
    a, b = local[: len(i)], local[len(i) :]
    views = [_unit(thumbs[used])]  # sharp first, then each blur
    views += [_unit(gaussian_filter(thumbs[used].astype(np.float64), (0, s, s))) for s in BLURS]
    best = np.empty(len(i))
    for start in range(0, len(i), _PAIR_CHUNK):  # pairs a chunk at a time: bounded memory
        pa, pb = a[start : start + _PAIR_CHUNK], b[start : start + _PAIR_CHUNK]
        sharp_a, sharp_b = views[0][pa], views[0][pb]
        out = np.einsum("ij,ij->i", sharp_a, sharp_b)
        for soft in views[1:]:
            out = np.maximum(out, np.einsum("ij,ij->i", soft[pa], sharp_b))
            out = np.maximum(out, np.einsum("ij,ij->i", sharp_a, soft[pb]))
        best[start : start + len(pa)] = out
    return best


def near_pairs(
    items: Items,
    max_bits: int = NEAR_BITS,
    similarity: float = NEAR_SIMILARITY,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, similarity) of near duplicates that are not exact ones. ``info`` gets
    ``near_bits``: the pHash distance used (below ``max_bits`` when there were more candidate
    pairs than ``CANDIDATE_BUDGET``)."""
    ok = np.nonzero(items.valid)[0]
    bits = max_bits
    if len(ok) * (len(ok) - 1) // 2 > CANDIDATE_BUDGET:
        bits = affordable_bits(items.phash[ok], max_bits)
    if info is not None:
        info["near_bits"] = bits
    i, j = hamming_pairs(items.phash[ok], bits)
    i, j = ok[i], ok[j]
    _, code = np.unique(np.array(items.exact, dtype=object).astype(str), return_inverse=True)
    differ = code[i] != code[j]  # exact copies are grouped by their hash already
    i, j = i[differ], j[differ]
    h, w = items.size[:, 0].astype(np.float64), items.size[:, 1].astype(np.float64)
    aspect = np.log(np.maximum(w, 1) / np.maximum(h, 1))
    same_shape = np.abs(aspect[i] - aspect[j]) <= np.log1p(ASPECT_TOLERANCE)
    i, j = i[same_shape], j[same_shape]
    # A cheap first look (the plain correlation: copies are above 0.98, most lookalikes far
    # below) leaves the blur matching a few pairs.
    plain = np.empty(len(i))
    flat = items.thumb.reshape(len(items.thumb), -1)
    for start in range(0, len(i), _PAIR_CHUNK):
        pa, pb = i[start : start + _PAIR_CHUNK], j[start : start + _PAIR_CHUNK]
        plain[start : start + len(pa)] = np.einsum("ij,ij->i", _unit(flat[pa]), _unit(flat[pb]))
    i, j = i[plain >= FIRST_LOOK], j[plain >= FIRST_LOOK]
    if not len(i):
        return i, j, np.zeros(0)
    sim = blur_matched_similarity(items.thumb, i, j)
    keep = sim >= similarity
    return i[keep], j[keep], sim[keep]


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def natural_key(text: str) -> list:
    """``train#9`` before ``train#10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _split_order(name: str) -> int:
    return SPLITS.index(name) if name in SPLITS else len(SPLITS)


def find_duplicates(items: Items, near: bool = True, **near_options) -> list[dict]:
    """Groups of two or more images that are copies of each other, the worst first: leaks
    with label conflicts, conflicts, leaks, then redundant copies; larger groups first.
    ``near_options`` go to ``near_pairs`` (``info``: a dict that gets its settings)."""
    n = len(items)
    by_hash: dict[str, list[int]] = {}
    for k in np.nonzero(items.valid)[0].tolist():
        by_hash.setdefault(items.exact[k], []).append(k)
    ei, ej = [], []
    for members in by_hash.values():
        ei += members[:1] * (len(members) - 1)
        ej += members[1:]
    ni, nj, sim = near_pairs(items, **near_options) if near else (np.zeros(0, int),) * 3
    i = np.concatenate([np.array(ei, dtype=np.int64), ni.astype(np.int64)])
    j = np.concatenate([np.array(ej, dtype=np.int64), nj.astype(np.int64)])
    if not len(i):
        return []
    comp = _components(n, i, j)
    closest: dict[int, float] = {}  # per group: its weakest near link
    for a, s in zip(ni.tolist(), sim.tolist()):
        closest[comp[a]] = min(closest.get(comp[a], 1.0), s)
    groups: dict[int, list[int]] = {}
    for k in sorted(set(i.tolist()) | set(j.tolist())):
        groups.setdefault(int(comp[k]), []).append(k)
    out = [_group(items, members, closest.get(c)) for c, members in groups.items()]
    rank = {"leak+conflict": 0, "conflict": 1, "leak": 2, "within": 3}
    out.sort(key=lambda g: (rank[g["status"]], -len(g["paths"]), natural_key(g["paths"][0])))
    return out


def _group(items: Items, members: list[int], similarity: float | None) -> dict:
    # The copy kept: in the first split (train before val and test), the largest image.
    area = items.size[:, 0] * items.size[:, 1]
    members = sorted(
        members,
        key=lambda k: (_split_order(items.split[k]), -int(area[k]), natural_key(items.refs[k])),
    )
    splits = sorted({items.split[k] for k in members}, key=_split_order)
    classes = sorted({items.label[k] for k in members})
    leak, conflict = len(splits) > 1, len(classes) > 1
    status = (
        "leak+conflict"
        if leak and conflict
        else "conflict"
        if conflict
        else ("leak" if leak else "within")
    )
    kind = "exact" if len({items.exact[k] for k in members}) == 1 else "near"
    # What to leave out: one copy is kept (the first training copy), unless the copies
    # disagree on the label: then no copy can be trusted until someone decides.
    keep = [] if conflict else members[:1]
    return {
        "kind": kind,
        "status": status,
        "leak": leak,
        "conflict": conflict,
        "paths": [items.refs[k] for k in members],
        "splits": splits,
        "classes": classes,
        "members": [
            {"path": items.refs[k], "split": str(items.split[k]), "label": items.label[k]}
            for k in members
        ],
        "similarity": None if kind == "exact" else round(float(similarity or 1.0), 4),
        "exclude": [items.refs[k] for k in members if k not in keep],
        "_index": members,
    }


def describe(group: dict) -> str:
    """What a group means, in words."""
    s = group["status"]
    if s == "within":
        return f"copies within {group['classes'][0]} / {group['splits'][0]}"
    parts = []
    if group["leak"]:
        parts.append("leak across " + " / ".join(group["splits"]))
    if group["conflict"]:
        parts.append("label conflict: " + " vs ".join(group["classes"]))
    return "; ".join(parts)
