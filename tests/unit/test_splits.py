import pytest

from dmlrepro.data.splits import split_classes


def _by_split(split):
    out = {"train": [], "val": [], "test": []}
    for c, s in split.items():
        out[s].append(c)
    return out


def test_first_half_trains_second_half_tests_and_val_is_carved_from_train():
    classes = list(range(200))
    parts = _by_split(split_classes(classes, 0.2))
    assert parts["test"] == classes[100:]
    assert sorted(parts["train"] + parts["val"]) == classes[:100]
    assert len(parts["val"]) == 20
    assert len(parts["train"]) == 80


def test_splits_are_class_disjoint_and_cover_every_class():
    classes = [f"U+{cp:04X}" for cp in range(0x4E00, 0x4E00 + 1899)]
    split = split_classes(classes, 0.2)
    assert list(split) == classes  # input order kept
    parts = _by_split(split)
    assert sum(len(v) for v in parts.values()) == len(classes)
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["val"]) & set(parts["test"])
    # odd count: train pool n // 2 = 949, test the remaining 950, val round(0.2 * 949) = 190
    assert len(parts["test"]) == 950
    assert len(parts["val"]) == 190


def test_validation_classes_are_deterministic_and_depend_on_seed_only():
    classes = list(range(100))
    a = split_classes(classes, 0.3, seed=0)
    b = split_classes(classes, 0.3, seed=0)
    assert a == b
    # the choice inside the pool does not depend on the order of the pool
    shuffled = list(reversed(classes[:50])) + classes[50:]
    assert set(_by_split(split_classes(shuffled, 0.3))["val"]) == set(_by_split(a)["val"])
    c = split_classes(classes, 0.3, seed=1)
    assert set(_by_split(c)["val"]) != set(_by_split(a)["val"])


def test_validation_classes_are_spread_over_the_training_pool():
    # not a contiguous block (e.g. a handful of radicals): both ends of the pool contribute
    val = _by_split(split_classes(list(range(1000)), 0.2))["val"]
    assert len(val) == 100
    assert min(val) < 125 and max(val) > 375
    assert max(val) - min(val) + 1 > len(val)


@pytest.mark.parametrize(
    "n, frac, expected",
    [
        (2, 0.2, {"train": 1, "val": 0, "test": 1}),       # never empties the training pool
        (4, 0.2, {"train": 1, "val": 1, "test": 2}),       # val_fraction > 0: at least one class
        (10, 0.0, {"train": 5, "val": 0, "test": 5}),
        (11, 0.5, {"train": 3, "val": 2, "test": 6}),      # pool 5: round(2.5) = 2 (half to even)
    ],
)
def test_small_class_counts(n, frac, expected):
    parts = _by_split(split_classes(list(range(n)), frac))
    assert {k: len(v) for k, v in parts.items()} == expected


@pytest.mark.parametrize("bad", [[], [1], [1, 1, 2]])
def test_bad_class_lists_raise(bad):
    with pytest.raises(ValueError):
        split_classes(bad, 0.2)


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_bad_val_fraction_raises(frac):
    with pytest.raises(ValueError, match="val_fraction"):
        split_classes(list(range(10)), frac)
