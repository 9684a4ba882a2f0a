"""Solver worker processes: the solver on every core, a process each.

    >>> solver = Solver.load("runs/main/models/minilm", SolverConfig(workers=2))
    >>> sols = solver.solve_batch(questions)   # 1,319 GSM8K test questions: this process and a worker
    >>> solver.close()                         # or `with Solver.load(...) as solver:`

Why processes and not threads: after the encoder (torch, which lets go of
the GIL) most of a batch's work is Python (clauses, plans, decoding,
executing and ranking some sixty graphs a question), so threads share one
core for it. With `workers=N` the calling process is one of the N and
spawns the others. Each loads the model folder itself (spawned, never
forked: torch's thread pools do not survive a fork), runs torch on one
thread, and solves whole batches; the calling process solves the batches
that find every worker busy, so it works while they load, too. Batches come
back in order, and the answers are the ones one process gives at one torch
thread (float32 matmuls round by thread count: identical on GSM8K fit 1,000).

As with any spawned process, a script that uses workers must start its work
under `if __name__ == "__main__":` (a worker imports the script's module).
The library's default is one process; the `mycelium` commands use a worker
per core (`--workers`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from .errors import MyceliumError

WARM_UP = "Tom has 3 boxes with 4 apples each. How many apples does he have?"
_solver = None  # the worker's own Solver
_ready = None  # a barrier every worker waits at once, so that `start` reaches each of them


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init(folder: str, config, ready) -> None:
    import torch

    from .solver import Solver

    global _solver, _ready
    torch.set_num_threads(1)  # a process per core
    _solver = Solver.load(folder, replace(config, workers=1, pipeline=False))
    _solver.solve_batch([WARM_UP])  # spaCy, fastText and first-call allocations, before any timed work
    _ready = ready


def _wait_ready(timeout: float) -> None:
    _ready.wait(timeout)


def _solve(questions: list[str]) -> list:
    s = _solver
    return s._finish(s._encode(s._prepare(questions)))


class WorkerPool:
    def __init__(self, folder: str | Path, config, workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.workers = workers
        self._executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                             initargs=(str(folder), config, ctx.Barrier(workers)))

    def start(self, timeout: float = 600.0) -> None:
        """Wait until every worker has loaded the model and solved a warm-up question."""
        # Each task blocks its worker at the barrier until all have one, so every worker gets one.
        for f in [self._executor.submit(_wait_ready, timeout) for _ in range(self.workers)]:
            self._result(f, timeout)

    def map(self, chunks: Iterator[list[str]], solve_here) -> Iterator[list]:
        """Each chunk's solutions, in chunk order. Up to two chunks a worker are in flight; the calling
        process solves the others itself with `solve_here` (so it works while the workers start, too)."""
        order: deque = deque()  # per chunk: its Future, or its solutions when solved here
        try:
            for chunk in chunks:
                if sum(isinstance(x, Future) and not x.done() for x in order) < 2 * self.workers:
                    order.append(self._executor.submit(_solve, chunk))
                else:
                    order.append(solve_here(chunk))
                while order and (not isinstance(order[0], Future) or order[0].done()):
                    yield self._result(order.popleft())
            while order:
                yield self._result(order.popleft())
        finally:  # the caller stopped early: drop what has not started
            for x in order:
                if isinstance(x, Future):
                    x.cancel()

    @staticmethod
    def _result(future, timeout: float | None = None):
        if not isinstance(future, Future):
            return future  # solved here
        try:
            return future.result(timeout)
        except BrokenProcessPool as e:
            raise MyceliumError(f"a solver worker process died ({e}); run with --workers 1 to solve in this "
                                "process and see its error") from None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
