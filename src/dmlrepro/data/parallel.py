"""Process pools and progress bars for the dataset kinds that read, check or render many files.

One pool per prepare stage (fork where the platform has it, so workers share the parent's
imports), an ordered map over it that also runs inline without a pool, and a tqdm bar on stderr
that refreshes seldom when stderr is a log file. Results come back in input order, so what a stage
writes does not depend on the number of workers.
"""
from __future__ import annotations

import multiprocessing
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def process_pool(workers: int) -> Iterator:
    """A pool of ``workers`` processes, closed and joined on exit; ``None`` (run inline) for one worker."""
    pool = None
    if workers > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        pool = ctx.Pool(workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def ordered_map(pool, fn: Callable, items: list, progress=None, weight: Callable = lambda item: 1) -> list:
    """Ordered map over ``items`` (inline without a pool), updating ``progress`` as results arrive."""
    it = pool.imap(fn, items, chunksize=1) if pool is not None else map(fn, items)
    out = []
    for item, res in zip(items, it):
        out.append(res)
        if progress is not None:
            progress.update(weight(item))
    return out


def progress_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr that leaves no line behind (refreshed every 5 s when stderr is a file)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)
