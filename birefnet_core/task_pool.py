"""Two kinds of per-item task run on a thread pool so that they overlap.

Python-bound tasks hold the GIL nearly all the time; tasks made of large numpy kernels release
it inside each kernel. Threads that all run the Python-bound kind take turns on the GIL, while a
thread on the array kind runs alongside one on the Python-bound kind. So a third of the threads
(at least one) start on the Python-bound tasks and the others on the array tasks; each thread,
when its first queue is empty, helps with the other until both are done.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def run_overlapped(count: int, python_bound: Callable[[int], A], array_bound: Callable[[int], B],
                   workers: int) -> tuple[list[A], list[B]]:
    """``[python_bound(i) for i in range(count)]`` and the same of ``array_bound``, computed on
    ``workers`` threads; the first exception raised by a task is raised here."""
    firsts: list = [None] * count
    seconds: list = [None] * count
    queues = (itertools.count(), itertools.count())       # next() on a count is atomic

    def drain(queue, task: Callable, out: list) -> None:
        while (index := next(queue)) < count:
            out[index] = task(index)

    def work(python_first: bool) -> None:
        kinds = [(queues[0], python_bound, firsts), (queues[1], array_bound, seconds)]
        for kind in (kinds if python_first else kinds[::-1]):
            drain(*kind)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, k < max(1, workers // 3)) for k in range(workers)]
        for future in futures:
            future.result()
    return firsts, seconds
