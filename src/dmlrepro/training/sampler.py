"""Class-balanced ("m per class") batch sampling, reproducible per (seed, epoch).

PML's ``MPerClassSampler`` draws from the global RNG, so a run resumed at epoch k would not replay
the batches an uninterrupted run sees. This sampler derives a fresh ``numpy.random.Generator``
from ``(seed, epoch)`` every time it is iterated: the batches of epoch k are a pure function of
(labels, m_per_class, batch_size, iterations, seed, k).
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import torch

from ..errors import DmlReproError
from ..study.settings import TrainSettings

__all__ = ["MPerClassBatchSampler", "RandomBatchSampler", "batch_sampler"]


class EpochBatches(torch.utils.data.Sampler):
    """``iterations`` batches per epoch, all a pure function of (seed, epoch): ``batches(epoch)``."""

    iterations: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches(self.epoch))

    def batches(self, epoch: int) -> List[List[int]]:
        raise NotImplementedError


class MPerClassBatchSampler(EpochBatches):
    """Yields ``iterations`` batches (lists of int indices into ``labels``) per epoch.

    Each batch holds ``batch_size // m_per_class`` distinct classes with ``m_per_class`` indices
    each, grouped by class (the m indices of a class are consecutive).

    * Classes are taken from a stream of random permutations of all classes, so over an epoch every
      class is drawn equally often (up to one): a batch that straddles two permutations never
      repeats a class (the classes it already holds are moved to the back of the new permutation).
    * Within a class, m distinct indices are drawn without replacement. A class with fewer than m
      indices is an error (it would silently repeat images) unless ``replace=True``
      (``train.sample_with_replacement``): then it contributes all of them (shuffled) and fills the
      rest by drawing with replacement from its own indices.

    Use as ``DataLoader(ds, batch_sampler=sampler)`` and call ``set_epoch(epoch)`` before each epoch.
    """

    def __init__(
        self,
        labels: Sequence,
        m_per_class: int,
        batch_size: int,
        iterations: int,
        seed: int = 0,
        replace: bool = False,
    ):
        labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise DmlReproError(f"sampler needs a non-empty 1-D list of labels, got shape {labels.shape}")
        for name, value, low in (("m_per_class", m_per_class, 1), ("batch_size", batch_size, 1),
                                 ("iterations", iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise DmlReproError(f"train.{name} must be an integer >= {low}, got {value!r}")
        if batch_size % m_per_class != 0:
            lower = batch_size - batch_size % m_per_class
            raise DmlReproError(
                f"train.batch_size ({batch_size}) must be a multiple of train.m_per_class ({m_per_class}); "
                f"use batch_size {lower or m_per_class} or {lower + m_per_class}, or change m_per_class"
            )
        self.classes, inverse = np.unique(labels, return_inverse=True)
        self.classes_per_batch = batch_size // m_per_class
        if self.classes_per_batch > len(self.classes):
            raise DmlReproError(
                f"train.batch_size {batch_size} with train.m_per_class {m_per_class} needs "
                f"{self.classes_per_batch} distinct classes per batch, but the training labels have only "
                f"{len(self.classes)} classes; lower batch_size to at most "
                f"{len(self.classes) * m_per_class} or raise m_per_class to at least "
                f"{-(-batch_size // len(self.classes))} (keeping batch_size a multiple of it)"
            )
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        #: indices of each class (position k holds the indices whose label is self.classes[k])
        self.class_indices: List[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        if not replace and counts.min() < m_per_class:
            small = int(np.argmin(counts))
            raise DmlReproError(
                f"train.m_per_class {m_per_class} is larger than the smallest training class "
                f"({self.classes[small]!r} has {counts[small]} images; {int((counts < m_per_class).sum())} "
                f"classes have fewer than {m_per_class}); lower m_per_class to at most {counts.min()}, or set "
                "train.sample_with_replacement: true to repeat images of small classes"
            )
        self.m_per_class = int(m_per_class)
        self.batch_size = int(batch_size)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.epoch = 0

    def batches(self, epoch: int) -> List[List[int]]:
        """All batches of ``epoch`` (independent of ``set_epoch``)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        n_classes, k, m = len(self.classes), self.classes_per_batch, self.m_per_class
        perm, pos = rng.permutation(n_classes), 0
        out: List[List[int]] = []
        for _ in range(self.iterations):
            if pos + k <= n_classes:
                chosen = perm[pos:pos + k]
                pos += k
            else:
                head = perm[pos:]
                perm = rng.permutation(n_classes)
                taken = np.isin(perm, head)
                perm = np.concatenate([perm[~taken], perm[taken]])
                need = k - len(head)
                chosen = np.concatenate([head, perm[:need]])
                pos = need
            batch: List[int] = []
            for c in chosen:
                idx = self.class_indices[c]
                if len(idx) >= m:
                    pick = rng.choice(idx, size=m, replace=False)
                else:
                    pick = np.concatenate([rng.permutation(idx), rng.choice(idx, size=m - len(idx), replace=True)])
                batch.extend(int(i) for i in pick)
            out.append(batch)
        return out


class RandomBatchSampler(EpochBatches):
    """``train.sampling: random``: batches of ``batch_size`` indices drawn without replacement from
    a fresh permutation per pass (the Proxy-Anchor / SGAR code's plain shuffled loader), a pure
    function of (seed, epoch) like :class:`MPerClassBatchSampler`."""

    def __init__(self, n: int, batch_size: int, iterations: int, seed: int = 0):
        if n < batch_size:
            raise DmlReproError(f"train.batch_size {batch_size} is larger than the {n} training images")
        self.n, self.batch_size, self.iterations, self.seed, self.epoch = int(n), int(batch_size), int(iterations), int(seed), 0

    def batches(self, epoch: int) -> List[List[int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
        order = np.concatenate([rng.permutation(self.n) for _ in range(-(-self.iterations * self.batch_size // self.n))])
        return [order[i * self.batch_size:(i + 1) * self.batch_size].tolist() for i in range(self.iterations)]


def batch_sampler(train_targets, train: TrainSettings, seed: int):
    """The training batches a run's `train` settings ask for (`sampling`: m_per_class or random);
    `iterations_per_epoch` null = one pass over the training images."""
    iterations = train.iterations_per_epoch or -(-len(train_targets) // train.batch_size)
    if train.sampling == "random":
        return RandomBatchSampler(len(train_targets), train.batch_size, iterations, seed)
    return MPerClassBatchSampler(train_targets, train.m_per_class, train.batch_size, iterations, seed,
                                 replace=train.sample_with_replacement)
