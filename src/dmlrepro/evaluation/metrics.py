"""Retrieval evaluation for deep metric learning: Recall@K, MAP@R, R-Precision and NMI.

One exact faiss inner-product search (IndexFlatIP) on L2-normalised float32 embeddings
feeds every retrieval metric. Queries are searched in chunks, each reduced at once to
per-query numbers with vectorised numpy, so memory stays O(chunk_size * k + N * D) and no
N x N matrix is ever built. k is what MAP@R and Recall@K (K <= 100) need; the few queries
with no correct neighbour among those get a second, deeper search for larger K.
"""
from __future__ import annotations

from typing import Any, Sequence

import faiss
import numpy as np

from ..errors import DmlReproError

#: Seed and iterations of the k-means behind NMI: those of pytorch-metric-learning's
#: AccuracyCalculator (faiss default seed, niter=20), so both give the same clustering.
KMEANS_SEED = 1234
KMEANS_NITER = 20


def evaluate_retrieval(
    query: Any,
    query_labels: Any,
    gallery: Any = None,
    gallery_labels: Any = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    chunk_size: int = 4096,
    *,
    compute_nmi: bool = True,
) -> dict[str, float]:
    """Evaluate embeddings by nearest-neighbour retrieval.

    Args:
        query: (N, D) float embeddings, numpy array or torch tensor. They are L2-normalised
            here (a zero vector stays zero: similarity 0 to everything).
        query_labels: (N,) integer class labels.
        gallery, gallery_labels: optional (M, D) embeddings and (M,) labels. Without them the
            protocol is leave-one-out within the query set (CUB-200, Cars196, SOP): each
            query's own item is excluded by index, so exact duplicates of it still count as
            neighbours. With them, queries are searched in the gallery (In-Shop) and nothing
            is excluded.
        ks: the K of Recall@K; each must be at most the size of the search set.
        chunk_size: most queries searched at once (memory ~ chunk_size * k * 40 bytes; fewer
            when k is large, so that one chunk holds at most ~16M neighbours).
        compute_nmi: run k-means for NMI. False skips it (and omits the "nmi" key), for
            cheap per-epoch validation.

    Returns:
        {"recall@K" for each K, "map@r", "r_precision", "nmi"}, Python floats in [0, 1].

    Definitions (equal to pytorch-metric-learning's AccuracyCalculator defaults):
        R is the number of items in the search set with the query's label (self excluded).
        Recall@K is the fraction of queries with at least one same-label item among their K
        nearest neighbours (AccuracyCalculator's precision_at_1 for K=1). R-Precision is the
        fraction of same-label items among the R nearest, and MAP@R the mean over positions
        i <= R holding a same-label item of precision@i, divided by R (Musgrave et al.,
        "A Metric Learning Reality Check", 2020). Queries with R = 0 (a singleton class in
        leave-one-out, or a label absent from the gallery) have no correct answer: like
        AccuracyCalculator (its not_lone_query_mask), they are left out of all retrieval
        averages. If no query is left, a DmlReproError is raised instead of returning NaN.
        NMI: faiss k-means (seed 1234, 20 iterations, as AccuracyCalculator) of the
        normalised query embeddings into as many clusters as distinct query labels, then
        normalized mutual information (arithmetic-mean normalisation, as scikit-learn).

    Ties: neighbours are ranked by decreasing similarity (float32 inner products computed
        by faiss), exact ties broken by increasing index in the search set, also among items
        tied at the k-th position (faiss alone returns an arbitrary subset of those, in no
        set order; such rows are re-ranked exactly from all their similarities). Exact
        duplicates are therefore ordered by index. Similarities that differ only in the last
        float32 bits are not ties: their order follows faiss's rounding, which can depend on
        its kernel choice (by batch size, hence chunk_size) and could flip such near-ties.
    """
    q = _as_embeddings(query, "query")
    ql = _as_labels(query_labels, "query_labels", len(q))
    if gallery is None:
        if gallery_labels is not None:
            raise DmlReproError("gallery_labels given without gallery")
        g, gl, loo = q, ql, True
    else:
        if gallery_labels is None:
            raise DmlReproError("gallery given without gallery_labels")
        g = _as_embeddings(gallery, "gallery")
        gl = _as_labels(gallery_labels, "gallery_labels", len(g))
        if g.shape[1] != q.shape[1]:
            raise DmlReproError(
                f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}"
            )
        loo = False
    ks = _check_ks(ks, len(g) - loo)
    if not (_is_int(chunk_size) and chunk_size >= 1):
        raise DmlReproError(f"chunk_size must be a positive integer, got {chunk_size!r}")

    # R per query: same-label items in the search set, minus the query itself in leave-one-out.
    classes, inverse = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    q_cls, g_cls = inverse[: len(ql)], inverse[len(ql) :]
    r = np.bincount(g_cls, minlength=len(classes))[q_cls] - loo
    valid = r > 0
    if not valid.any():
        raise DmlReproError(
            "no query has another item of its class in the search set: "
            "retrieval metrics are undefined (every class is a singleton?)"
        )
    # One pass with the k that MAP@R / R-Precision need and that Recall@K needs for K <= 100;
    # the few queries still without a correct neighbour then get a deeper search for large K.
    k = max(int(r.max()), min(max(ks), 100))

    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    first_hit = np.empty(len(q), dtype=np.int64)  # rank of the first correct neighbour (k: none)
    r_prec = np.zeros(len(q))
    ap_r = np.zeros(len(q))
    step = max(1, min(chunk_size, (1 << 24) // (max(ks) + 2)))  # at most ~16M neighbours at once
    for start in range(0, len(q), step):
        rows = np.arange(start, min(start + step, len(q)))
        hits = _hits(index, g, q, rows, k, loo, g_cls, q_cls)
        first_hit[rows] = np.where(hits.any(axis=1), hits.argmax(axis=1), k)
        rc = r[rows]
        rmax = max(int(rc.max()), 1)
        hits_r = hits[:, :rmax] & (np.arange(rmax) < rc[:, None])
        cum = np.cumsum(hits_r, axis=1)
        denom = np.maximum(rc, 1)
        r_prec[rows] = cum[:, -1] / denom
        ap_r[rows] = (cum * hits_r / np.arange(1, rmax + 1)).sum(axis=1) / denom
    if max(ks) > k:
        missed = np.flatnonzero(valid & (first_hit == k))
        for start in range(0, len(missed), step):
            rows = missed[start : start + step]
            hits = _hits(index, g, q, rows, max(ks), loo, g_cls, q_cls)
            first_hit[rows] = np.where(hits.any(axis=1), hits.argmax(axis=1), max(ks))

    out = {f"recall@{kk}": float(np.mean(first_hit[valid] < kk)) for kk in ks}
    out["map@r"] = float(np.mean(ap_r[valid]))
    out["r_precision"] = float(np.mean(r_prec[valid]))
    if compute_nmi:
        out["nmi"] = normalized_mutual_info(ql, kmeans_assign(q, len(np.unique(ql))))
    return out


def kmeans_assign(x: np.ndarray, n_clusters: int, seed: int = KMEANS_SEED) -> np.ndarray:
    """Cluster ids of the rows of float32 `x` after seeded faiss k-means (deterministic)."""
    if n_clusters == 1:
        return np.zeros(len(x), dtype=np.int64)
    # min_points_per_centroid only silences faiss's "please provide more points" warning.
    km = faiss.Kmeans(
        x.shape[1], n_clusters, niter=KMEANS_NITER, seed=seed, min_points_per_centroid=1
    )
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


def normalized_mutual_info(labels_true: Any, labels_pred: Any) -> float:
    """NMI with arithmetic-mean normalisation: MI / ((H(true) + H(pred)) / 2).

    Same value and edge cases as scikit-learn's normalized_mutual_info_score: 1.0 when both
    labelings are a single cluster, 0.0 when the mutual information is 0.
    """
    a = np.unique(np.asarray(labels_true), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(labels_pred), return_inverse=True)[1].ravel()
    if len(a) != len(b):
        raise DmlReproError(f"labelings differ in length: {len(a)} vs {len(b)}")
    na, nb = a.max(initial=-1) + 1, b.max(initial=-1) + 1
    if na == nb and na <= 1:
        return 1.0
    # Sparse contingency table: the non-zero cells only (dense would be na * nb).
    cells, n_ij = np.unique(a.astype(np.int64) * nb + b, return_counts=True)
    n_i, n_j = np.bincount(a), np.bincount(b)
    n = float(len(a))
    outer = n_i[cells // nb].astype(np.float64) * n_j[cells % nb]
    mi = np.sum(n_ij / n * (np.log(n_ij) + np.log(n) - np.log(outer)))
    if na == 1 or nb == 1 or mi <= np.finfo(np.float64).eps * len(cells):
        return 0.0
    denom = (_entropy(n_i) + _entropy(n_j)) / 2
    return float(min(max(mi / denom, 0.0), 1.0))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _search(index: faiss.IndexFlatIP, gallery: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest gallery items of each row, ordered by (-similarity, index)."""
    n = index.ntotal
    m = min(k + 1, n)  # one extra neighbour reveals ties straddling the k-th position
    sims, idx = index.search(x, m)
    if m > k:
        # Faiss keeps an arbitrary subset of the items tied at the k-th position: rank those
        # rows exactly, from all their similarities (numpy, a few rows at a time).
        rows = np.flatnonzero(sims[:, k - 1] == sims[:, k])
        for start in range(0, len(rows), 64):
            block = rows[start : start + 64]
            for row, s in zip(block, x[block] @ gallery.T):
                cand = np.flatnonzero(s >= np.partition(s, n - k)[n - k])
                best = cand[np.argsort(-s[cand], kind="stable")[:k]]
                sims[row, :k], idx[row, :k] = s[best], best
        sims, idx = sims[:, :k], idx[:, :k]
    tied = np.flatnonzero((sims[:, 1:] == sims[:, :-1]).any(axis=1))
    if len(tied):  # faiss does not order equal similarities by index: re-sort those rows
        order = np.lexsort((idx[tied], -sims[tied]), axis=1)
        idx[tied] = np.take_along_axis(idx[tied], order, axis=1)
    return idx


def _hits(index, gallery, q, rows, k, loo, g_cls, q_cls) -> np.ndarray:
    """(len(rows), k) booleans: is the i-th nearest neighbour of each query of its class?"""
    nn = _search(index, gallery, q[rows], k + loo)
    if loo:
        nn = _drop_self(nn, rows)
    return g_cls[nn] == q_cls[rows, None]


def _drop_self(nn: np.ndarray, self_idx: np.ndarray) -> np.ndarray:
    """Remove each row's own index; a row without it (tied duplicates ranked first) loses its last."""
    is_self = nn == self_idx[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return nn[~is_self].reshape(len(nn), -1)


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    """Validated, row-wise L2-normalised, C-contiguous float32 copy of an (N, D) array."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu()
        x = x.float().numpy() if x.dtype.is_floating_point and x.dtype.itemsize < 4 else x.numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise DmlReproError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if x.size == 0:
        raise DmlReproError(f"{name} is empty (shape {x.shape})")
    if x.dtype.kind not in "biuf":
        raise DmlReproError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DmlReproError(f"{name} contains NaN or infinite values")
    # Work in float32 (float64 input first stays float64 so huge values can be rescaled).
    x = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    amax = np.abs(x).max(axis=1)
    extreme = (amax > 0) & ((amax > 1e15) | (amax < 1e-15))  # squares would over/underflow
    x[extreme] /= amax[extreme, None]
    x = x.astype(np.float32, copy=False)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    # Rows already of unit norm (to float32 rounding) are kept bit for bit: idempotent.
    x /= np.where((norm > 0) & (np.abs(norm - 1) > 1e-6), norm, 1.0)
    return x


def _as_labels(y: Any, name: str, n: int) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise DmlReproError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "biu":
        raise DmlReproError(f"{name} must be integers, got dtype {y.dtype}")
    if len(y) != n:
        raise DmlReproError(f"{name} has {len(y)} entries but the embeddings have {n} rows")
    return y.astype(np.int64, copy=False)


def _check_ks(ks: Sequence[int], n_search: int) -> tuple[int, ...]:
    ks = tuple(ks) if not isinstance(ks, (int, np.integer)) else (ks,)
    if not ks or not all(_is_int(k) and k >= 1 for k in ks):
        raise DmlReproError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    if max(ks) > n_search:
        raise DmlReproError(
            f"K={max(ks)} is larger than the search set ({n_search} items per query)"
        )
    return tuple(int(k) for k in ks)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
