"""Pin torch and faiss to a job's thread count: parallel jobs that each spin up every core's worth of
OpenMP threads run several times slower than pinned ones."""
from __future__ import annotations


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
