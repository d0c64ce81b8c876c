from collections import Counter

import numpy as np
import pytest
import torch

from dmlrepro.errors import DmlReproError
from dmlrepro.training.sampler import MPerClassBatchSampler


def _labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def _chunks(batch, m):
    return [batch[i:i + m] for i in range(0, len(batch), m)]


def test_batch_composition():
    labels = _labels([5, 7, 4, 9, 6, 8, 4, 5, 10, 4])
    s = MPerClassBatchSampler(labels, m_per_class=4, batch_size=16, iterations=50, seed=0)
    assert len(s) == 50
    batches = list(s)
    assert len(batches) == 50
    for batch in batches:
        assert len(batch) == 16 and all(isinstance(i, int) for i in batch)
        assert all(0 <= i < len(labels) for i in batch)
        classes = []
        for chunk in _chunks(batch, 4):
            chunk_labels = {labels[i] for i in chunk}
            assert len(chunk_labels) == 1  # the m indices of a class are consecutive
            assert len(set(chunk)) == 4  # all classes here have >= m images: no repeats
            classes.append(chunk_labels.pop())
        assert len(set(classes)) == 4  # distinct classes within a batch


def test_classes_are_drawn_evenly_over_an_epoch():
    labels = _labels([6] * 7)
    s = MPerClassBatchSampler(labels, m_per_class=2, batch_size=6, iterations=40, seed=5)
    counts = Counter(labels[b[i]] for b in s for i in range(0, 6, 2))
    assert sum(counts.values()) == 120
    assert max(counts.values()) - min(counts.values()) <= 1
    for batch in s:  # batches straddling two class permutations still hold distinct classes
        assert len({labels[i] for i in batch}) == 3


def test_deterministic_per_seed_and_epoch():
    labels = _labels([5, 6, 7, 8, 9, 4, 4, 4])
    a = MPerClassBatchSampler(labels, 4, 16, 10, seed=1)
    b = MPerClassBatchSampler(labels, 4, 16, 10, seed=1)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert list(a) == list(a)  # iterating twice replays the epoch
        assert list(a) == a.batches(epoch)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    c = MPerClassBatchSampler(labels, 4, 16, 10, seed=2)
    assert list(c) != first


def test_resume_replays_batches_regardless_of_global_rng():
    labels = _labels([5] * 10)
    s = MPerClassBatchSampler(labels, 4, 8, 5, seed=0)
    s.set_epoch(7)
    np.random.seed(123)
    torch.manual_seed(123)
    x = list(s)
    np.random.seed(999)
    torch.manual_seed(999)
    fresh = MPerClassBatchSampler(labels, 4, 8, 5, seed=0)
    fresh.set_epoch(7)
    assert list(fresh) == x


def test_class_smaller_than_m_is_refused_unless_replacement_is_asked_for():
    labels = _labels([5, 2, 3])
    with pytest.raises(DmlReproError) as info:
        MPerClassBatchSampler(labels, m_per_class=4, batch_size=12, iterations=5, seed=0)
    msg = str(info.value)
    assert "train.m_per_class 4" in msg and "has 2 images" in msg and "2 classes have fewer" in msg
    assert "train.sample_with_replacement: true" in msg
    MPerClassBatchSampler(labels, m_per_class=2, batch_size=6, iterations=5, seed=0)  # m = smallest: fine


def test_small_classes_sampled_with_replacement():
    labels = _labels([1, 2, 3])
    s = MPerClassBatchSampler(labels, m_per_class=4, batch_size=12, iterations=5, seed=0, replace=True)
    for batch in s:
        by_class = {labels[c[0]]: c for c in _chunks(batch, 4)}
        assert by_class[0] == [0, 0, 0, 0]  # single-image class: m copies
        assert set(by_class[1]) == {1, 2}  # every image of a small class is used
        assert set(by_class[2]) == {3, 4, 5}


def test_tensor_and_string_labels():
    s = MPerClassBatchSampler(torch.tensor([3, 3, 9, 9, 7, 7]), 2, 4, 3, seed=0)
    assert all(len(b) == 4 for b in s)
    s = MPerClassBatchSampler(["a", "a", "b", "b"], 2, 4, 2, seed=0)
    assert all(sorted(b) == [0, 1, 2, 3] for b in s)


def test_works_as_dataloader_batch_sampler():
    labels = _labels([4, 4, 4, 4])
    ds = torch.utils.data.TensorDataset(torch.arange(16), torch.as_tensor(labels))
    s = MPerClassBatchSampler(labels, 2, 4, 3, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=s)
    got = [xb.tolist() for xb, _ in loader]
    assert got == list(s)


def test_batch_size_not_multiple_of_m():
    with pytest.raises(DmlReproError, match=r"batch_size \(30\) must be a multiple of train.m_per_class \(4\)"):
        MPerClassBatchSampler(_labels([5] * 10), 4, 30, 1)


def test_too_few_classes_says_how_to_fix():
    with pytest.raises(DmlReproError) as info:
        MPerClassBatchSampler(_labels([5] * 20), 4, 128, 1)
    msg = str(info.value)
    assert "32 distinct classes" in msg and "only 20 classes" in msg
    assert "at most 80" in msg and "m_per_class" in msg


@pytest.mark.parametrize(
    "args", [dict(m_per_class=0), dict(batch_size=0), dict(iterations=0), dict(m_per_class=2.5), dict(iterations=True)]
)
def test_invalid_numbers(args):
    kwargs = dict(m_per_class=2, batch_size=4, iterations=2)
    kwargs.update(args)
    with pytest.raises(DmlReproError):
        MPerClassBatchSampler(_labels([3, 3, 3]), **kwargs)


def test_empty_labels():
    with pytest.raises(DmlReproError, match="non-empty"):
        MPerClassBatchSampler([], 2, 4, 1)
