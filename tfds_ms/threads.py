"""Per-subject work on several cores, results in order: the phantom writers and the builder.

Synthesising, resampling and compressing a subject run in NumPy, SciPy and zlib, which release
the GIL, so threads use the cores without copying volumes between processes (and without
forking a process that has TensorFlow loaded). Each subject's work depends only on the
subject, so the results, taken in order, are the same as one thread's.
"""

from __future__ import annotations

import collections
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

# More threads than this add memory (a subject's volumes each) faster than speed.
MAX_WORKERS = 4


def default_workers() -> int:
    """The cores this process may use, at most ``MAX_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def ordered_map(function, items, workers: int | None = None):
    """Yields ``function(item)`` for each item in order, computed by up to ``workers`` threads.

    At most ``workers`` results are in flight, so memory stays bounded by a few subjects
    however many there are. An exception from ``function`` is raised when its item's turn
    comes; the items not yet started are then dropped.

    Example:

    >>> list(ordered_map(lambda x: x * x, range(5), workers=2))
    [0, 1, 4, 9, 16]
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1:
        yield from map(function, items)
        return
    items = iter(items)
    pool = ThreadPoolExecutor(workers)
    try:
        pending = collections.deque(pool.submit(function, item)
                                    for item in itertools.islice(items, workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(function, item) for item in itertools.islice(items, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
