"""evaluate_retrieval against a brute-force reference, hand-computed values and PML's AccuracyCalculator."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dmlrepro.errors import DmlReproError
from dmlrepro.evaluation.metrics import evaluate_retrieval, normalized_mutual_info

RETRIEVAL_KEYS = ("map@r", "r_precision")


# ---------------------------------------------------------------- reference and data


def reference(query, query_labels, gallery=None, gallery_labels=None, ks=(1, 2, 4, 8)):
    """Brute force: full similarity matrix, neighbours stably sorted by (-similarity, index)."""
    loo = gallery is None
    if loo:
        gallery, gallery_labels = query, query_labels

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1)

    # Rounding makes exact ties (duplicates) ties here too, whatever the float noise.
    sims = np.round(unit(query) @ unit(gallery).T, 6)
    recall = {k: [] for k in ks}
    r_prec, ap_r = [], []
    for i, label in enumerate(query_labels):
        order = np.lexsort((np.arange(len(gallery)), -sims[i]))
        if loo:
            order = order[order != i]
        hits = gallery_labels[order] == label
        r = int(hits.sum())
        if r == 0:  # no correct answer: left out, as AccuracyCalculator does
            continue
        for k in ks:
            recall[k].append(hits[:k].any())
        r_prec.append(hits[:r].mean())
        ap_r.append(sum(hits[:j + 1].sum() / (j + 1) for j in range(r) if hits[j]) / r)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recall.items()}
    out["map@r"] = float(np.mean(ap_r))
    out["r_precision"] = float(np.mean(r_prec))
    return out


def clustered(seed, n=300, dim=16, n_classes=40, noise=0.8):
    """Noisy class centres: recall is neither 0 nor 1, classes have 1 to ~15 items."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.standard_normal((n_classes, dim))
    x = centres[labels] + noise * rng.standard_normal((n, dim))
    return x.astype(np.float32), labels


def quantized(seed, n=200, dim=8, n_classes=6):
    """Vectors with four entries of +-0.5: unit norm, inner products exact multiples of 1/4.

    Nearly every neighbour list is full of exact ties, also at the k-th position.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x, rng.integers(0, n_classes, n)


def assert_same(ours, ref, keys=None):
    keys = keys or ref.keys()
    for key in keys:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


# ---------------------------------------------------------------- against brute force


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_matches_bruteforce(seed):
    x, y = clustered(seed)
    ks = (1, 2, 4, 8, 16)
    ours = evaluate_retrieval(x, y, ks=ks, compute_nmi=False)
    assert set(ours) == {f"recall@{k}" for k in ks} | set(RETRIEVAL_KEYS)
    assert_same(ours, reference(x, y, ks=ks))
    assert 0 < ours["recall@1"] < 1 and 0 < ours["map@r"] < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_matches_bruteforce(seed):
    x, y = clustered(seed, n=400)
    q, ql, g, gl = x[:150], y[:150], x[150:], y[150:]
    ql = ql.copy()
    ql[:5] = 999  # labels absent from the gallery: no correct answer, left out
    ours = evaluate_retrieval(q, ql, g, gl, ks=(1, 5, 10))
    assert_same(ours, reference(q, ql, g, gl, ks=(1, 5, 10)))
    assert 0 <= ours["nmi"] <= 1


@pytest.mark.parametrize("data", ["clustered", "quantized"])
def test_large_k_matches_bruteforce(data):
    # K above 100: the queries without a correct neighbour in the first pass are searched deeper.
    if data == "clustered":
        x, y = clustered(13, n=700, dim=8, n_classes=120, noise=3.0)
    else:
        x, y = quantized(13, n=700, n_classes=40)
    ks = (1, 100, 101, 250, 600)
    ours = evaluate_retrieval(x, y, ks=ks, compute_nmi=False)
    assert_same(ours, reference(x, y, ks=ks))
    assert ours["recall@100"] < ours["recall@250"] < 1.0
    q, ql, g, gl = x[:200], y[:200], x[200:], y[200:]
    ks = (1, 150, 500)
    assert_same(evaluate_retrieval(q, ql, g, gl, ks=ks, compute_nmi=False, chunk_size=64),
                reference(q, ql, g, gl, ks=ks))


def test_gallery_mode_excludes_nothing():
    x, y = clustered(3, n=120)
    # The query set used as its own gallery: every query finds itself first.
    ours = evaluate_retrieval(x, y, x, y, ks=(1,), compute_nmi=False)
    assert ours["recall@1"] == 1.0
    assert_same(ours, reference(x, y, x.copy(), y, ks=(1,)))


def test_exact_duplicates_are_neighbours():
    x, y = clustered(4, n=100)
    # Every vector twice, same label: leave-one-out finds the twin (excluded by index only).
    x2, y2 = np.concatenate([x, x]), np.concatenate([y, y])
    ours = evaluate_retrieval(x2, y2, ks=(1, 2), compute_nmi=False)
    assert ours["recall@1"] == 1.0
    assert_same(ours, reference(x2, y2, ks=(1, 2)))
    # Twins with different labels: tied with the true neighbour, the lower index ranks first.
    y3 = np.concatenate([y, y + 1000])
    y3[::7] = y3[::7] % 1000
    assert_same(evaluate_retrieval(x2, y3, ks=(1, 2), compute_nmi=False), reference(x2, y3, ks=(1, 2)))


def test_singleton_classes_are_left_out():
    x, y = clustered(5, n=200, n_classes=20)
    y = y.copy()
    y[:10] = np.arange(1000, 1010)  # ten singleton classes
    ours = evaluate_retrieval(x, y, ks=(1, 4), compute_nmi=False)
    assert_same(ours, reference(x, y, ks=(1, 4)))
    # Equal to the metrics over the other queries only (searching among all items).
    keep = np.ones(len(y), bool)
    keep[:10] = False
    assert_same(ours, reference_subset(x, y, keep, ks=(1, 4)))


def reference_subset(x, y, keep, ks):
    """Reference over the queries in `keep` only, still searching the whole set minus self."""
    full = {}
    for i in np.flatnonzero(keep):
        others = np.arange(len(x)) != i
        r = reference(x[i : i + 1], y[i : i + 1], x[others], y[others], ks=ks)
        for key, v in r.items():
            full.setdefault(key, []).append(v)
    return {key: float(np.mean(v)) for key, v in full.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_are_ordered_by_index(seed):
    x, y = quantized(seed)
    ks = (1, 3, 10, 50)
    assert_same(evaluate_retrieval(x, y, ks=ks, compute_nmi=False), reference(x, y, ks=ks))
    q, ql, g, gl = x[:60], y[:60], x[60:], y[60:]
    assert_same(evaluate_retrieval(q, ql, g, gl, ks=ks, compute_nmi=False), reference(q, ql, g, gl, ks=ks))


def test_tie_at_first_position_goes_to_lower_index():
    # Items 1 and 2 are both identical to the query item 0; item 1 (wrong class) wins the tie.
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    y = np.array([0, 1, 0, 1, 2])
    q_res = evaluate_retrieval(x[:1], y[:1], x[1:], y[1:], ks=(1, 2), compute_nmi=False)
    assert q_res["recall@1"] == 0.0 and q_res["recall@2"] == 1.0
    assert q_res["map@r"] == 0.0  # R = 1, the first neighbour is wrong
    swapped = evaluate_retrieval(x[:1], y[:1], x[[2, 1, 3, 4]], y[[2, 1, 3, 4]], ks=(1,), compute_nmi=False)
    assert swapped["recall@1"] == 1.0 and swapped["map@r"] == 1.0


def test_zero_vectors_are_handled():
    x, y = clustered(6, n=80)
    x[[3, 10, 11]] = 0.0  # similarity 0 to everything: tied with all
    ours = evaluate_retrieval(x, y, ks=(1, 4))
    assert_same(ours, reference(x, y, ks=(1, 4)))
    assert all(0.0 <= v <= 1.0 for v in ours.values())


def test_hand_computed_example():
    # Unit vectors at these angles (degrees); neighbours are ranked by angular distance.
    angles = np.deg2rad([0, 10, 25, 90, 100])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array([0, 1, 1, 0, 1])
    # query: neighbours   hits     R  r-prec  AP@R
    # 0      1 2 3 4      . . x .  1  0       0
    # 1      0 2 3 4      . x . x  2  1/2     (1/2)/2
    # 2      1 0 3 4      x . . x  2  1/2     1/2
    # 3      4 2 1 0      . . . x  1  0       0
    # 4      3 2 1 0      . x x .  2  1/2     (1/2)/2  (the hit at rank 3 is beyond R)
    res = evaluate_retrieval(x, y, ks=(1, 2, 4), compute_nmi=False)
    assert res["recall@1"] == pytest.approx(1 / 5)
    assert res["recall@2"] == pytest.approx(3 / 5)
    assert res["recall@4"] == pytest.approx(1.0)
    assert res["r_precision"] == pytest.approx(1.5 / 5)
    assert res["map@r"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 4) / 5)


def test_chunking_does_not_change_anything():
    x, y = clustered(7, n=257)
    full = evaluate_retrieval(x, y, ks=(1, 3, 30))
    for chunk in (1, 7, 256):
        assert evaluate_retrieval(x, y, ks=(1, 3, 30), chunk_size=chunk) == full
    xq, yq = quantized(8)
    full = evaluate_retrieval(xq, yq, ks=(1, 5), compute_nmi=False)
    assert evaluate_retrieval(xq, yq, ks=(1, 5), chunk_size=3, compute_nmi=False) == full


def test_inputs_need_not_be_normalised_and_may_be_tensors():
    torch = pytest.importorskip("torch")
    x, y = clustered(9, n=150)
    base = evaluate_retrieval(x, y, ks=(1, 2))
    scales = np.random.default_rng(0).uniform(0.1, 100, (len(x), 1)).astype(np.float32)
    scaled = evaluate_retrieval(x * scales, y, ks=(1, 2))
    assert scaled.keys() == base.keys()
    assert all(scaled[k] == pytest.approx(base[k], abs=1e-12) for k in base if k != "nmi")
    assert evaluate_retrieval(torch.from_numpy(x), torch.from_numpy(y), ks=(1, 2)) == base
    assert evaluate_retrieval(x.astype(np.float64), y, ks=(1, 2)) == base


def test_extreme_magnitudes_are_normalised():
    x, y = clustered(10, n=60)
    base = evaluate_retrieval(x, y, ks=(1,), compute_nmi=False)
    for factor in (1e-30, 1e30):
        res = evaluate_retrieval(x.astype(np.float64) * factor, y, ks=(1,), compute_nmi=False)
        assert res == pytest.approx(base, abs=1e-9)


# ---------------------------------------------------------------- NMI


def test_nmi_is_one_for_a_perfect_clustering():
    y = np.array([0, 0, 1, 1, 1, 2, 7, 7])
    assert normalized_mutual_info(y, np.array([5, 5, 3, 3, 3, 0, 1, 1])) == pytest.approx(1.0)
    assert normalized_mutual_info([4, 4, 4], [0, 0, 0]) == 1.0
    # Three well separated classes: the seeded k-means recovers them. (With many classes a
    # random k-means start may merge two, as in AccuracyCalculator: NMI is then below 1.)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = np.eye(8, dtype=np.float32)[labels] + 0.01 * rng.standard_normal((60, 8)).astype(np.float32)
    assert evaluate_retrieval(x, labels, ks=(1,))["nmi"] == pytest.approx(1.0)


def test_nmi_hand_computed_contingency():
    true = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 1, 1, 2, 2]
    # contingency [[2, 1, 0], [0, 1, 2]]: MI = 2/3 log 2, H(true) = log 2, H(pred) = log 3
    expected = (2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2)
    assert normalized_mutual_info(true, pred) == pytest.approx(expected, abs=1e-12)
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0  # independent
    assert normalized_mutual_info([0, 0, 1, 1], [3, 3, 3, 3]) == 0.0  # one cluster


def test_nmi_matches_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for n_true, n_pred in ((3, 3), (50, 40), (2, 200)):
        a, b = rng.integers(0, n_true, 500), rng.integers(0, n_pred, 500)
        b[:250] = a[:250]
        assert normalized_mutual_info(a, b) == pytest.approx(
            metrics.normalized_mutual_info_score(a, b), abs=1e-12
        )


def test_nmi_is_deterministic_and_optional():
    x, y = clustered(11, n=200)
    a = evaluate_retrieval(x, y, ks=(1,))
    assert evaluate_retrieval(x, y, ks=(1,)) == a
    assert "nmi" not in evaluate_retrieval(x, y, ks=(1,), compute_nmi=False)


# ---------------------------------------------------------------- errors


def _errors():
    x, y = clustered(0, n=10)
    return [
        ("labels", dict(query=x, query_labels=y[:9])),
        ("NaN", dict(query=np.where(np.arange(10)[:, None] == 3, np.nan, x), query_labels=y)),
        ("NaN", dict(query=np.where(np.arange(10)[:, None] == 3, np.inf, x), query_labels=y)),
        ("empty", dict(query=np.zeros((0, 4), np.float32), query_labels=np.zeros(0, int))),
        ("2-D", dict(query=x[0], query_labels=y[:1])),
        ("integers", dict(query=x, query_labels=y.astype(float))),
        ("without gallery_labels", dict(query=x, query_labels=y, gallery=x)),
        ("without gallery", dict(query=x, query_labels=y, gallery_labels=y)),
        ("dimensions", dict(query=x, query_labels=y, gallery=x[:, :5], gallery_labels=y)),
        ("larger than the search set", dict(query=x, query_labels=y, ks=(10,))),
        ("larger than the search set", dict(query=x, query_labels=y, gallery=x[:3], gallery_labels=y[:3], ks=(4,))),
        ("positive integers", dict(query=x, query_labels=y, ks=())),
        ("positive integers", dict(query=x, query_labels=y, ks=(0,))),
        ("chunk_size", dict(query=x, query_labels=y, ks=(1,), chunk_size=0)),
        ("singleton", dict(query=x, query_labels=np.arange(10), ks=(1,))),
    ]


@pytest.mark.parametrize("message,kwargs", _errors())
def test_bad_input_raises(message, kwargs):
    with pytest.raises(DmlReproError, match=message):
        evaluate_retrieval(**kwargs)


def test_k_equal_to_search_set_is_allowed():
    x, y = clustered(12, n=10, n_classes=3)
    assert evaluate_retrieval(x, y, ks=(9,), compute_nmi=False)["recall@9"] == 1.0


# ---------------------------------------------------------------- pytorch-metric-learning


def _pml(x, y, gx=None, gy=None):
    torch = pytest.importorskip("torch")
    acc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    calc = acc.AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(x, y, gx, gy)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_accuracy_calculator_leave_one_out(seed):
    x, y = clustered(seed, n=1000, dim=32, n_classes=150, noise=1.0)
    x = _unit(x)
    ours = evaluate_retrieval(x, y, ks=(1,))
    pml = _pml(x, y)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-6)  # same seeded faiss k-means


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_accuracy_calculator_query_gallery(seed):
    x, y = clustered(seed, n=1200, dim=32, n_classes=150, noise=1.0)
    x = _unit(x)
    q, ql, g, gl = x[:500], y[:500], x[500:], y[500:]
    ours = evaluate_retrieval(q, ql, g, gl, ks=(1,))
    pml = _pml(q, ql, g, gl)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-6)
