"""Two kinds of per-item task run on a thread pool so that they overlap.

Python-bound tasks hold the GIL nearly all the time; tasks made of large numpy kernels release
it inside each kernel. Threads that all run the Python-bound kind take turns on the GIL, while a
thread on the array kind runs alongside one on the Python-bound kind. So a third of the threads
(at least one) start on the Python-bound tasks and the others on the array tasks; each thread,
when its first queue is empty, helps with the other until both are done.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def run_overlapped(count: int, python_bound: Callable[[int], A], array_bound: Callable[[int], B],
                   workers: int, on_item: Callable[[int], None] | None = None
                   ) -> tuple[list[A], list[B]]:
    """``[python_bound(i) for i in range(count)]`` and the same of ``array_bound``, computed on
    ``workers`` threads. ``on_item(i)`` runs (on a worker thread) once both tasks of item i are
    done. The first exception raised by a task or by ``on_item`` stops every thread from taking
    new tasks and is raised here."""
    firsts: list = [None] * count
    seconds: list = [None] * count
    queues = (itertools.count(), itertools.count())       # next() on a count is atomic
    halves_done = [0] * count
    lock = threading.Lock()
    failed = threading.Event()

    def finish(index: int) -> None:
        with lock:
            halves_done[index] += 1
            whole = halves_done[index] == 2
        if whole and on_item is not None:
            on_item(index)

    def drain(queue, task: Callable, out: list) -> None:
        while not failed.is_set() and (index := next(queue)) < count:
            out[index] = task(index)
            finish(index)

    def work(python_first: bool) -> None:
        kinds = [(queues[0], python_bound, firsts), (queues[1], array_bound, seconds)]
        try:
            for kind in (kinds if python_first else kinds[::-1]):
                drain(*kind)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, k < max(1, workers // 3)) for k in range(workers)]
        for future in futures:
            future.result()
    return firsts, seconds
