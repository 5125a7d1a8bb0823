"""Running the demo's commands side by side: a fixed number of command slots shared by all stages.

The embedded models are small, so a second thread shortens one command by far less than 2x
(measured, quick settings: GDT pretraining 39 -> 21.5 s, the text teacher 35.6 -> 26.6 s; the
KD/CCL recipes fix one thread), while two single-thread commands side by side keep both cores
busy (the sum of the commands' wall times was 2x the demo's). That is what makes the demo fit its
time on a 2-core machine. `Slots` hands out the slots by priority (side work after the chains of
dependent commands), then first come, first served; it gives every command
``OMP_NUM_THREADS = cpus // jobs`` and measures the resident memory of the commands running
together (the demo's peak is the sum, not the largest single command).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """One command per core, at most 4: beyond that the demo's stage graph has little left to overlap."""
    return max(1, min(4, available_cpus()))


class Cancelled(KeyboardInterrupt):
    """Raised in a stage waiting for a slot once the demo is being stopped."""


class Slots:
    """`jobs` command slots, granted in request order; tracks the running commands' memory."""

    def __init__(self, jobs: int = 1, cpus: int | None = None):
        self.jobs = max(1, int(jobs))
        self.threads = max(1, (cpus or available_cpus()) // self.jobs)
        self._cv = threading.Condition()
        self._free = list(range(self.jobs))
        self._queue: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._procs: dict[int, subprocess.Popen] = {}
        self._rss: dict[int, float] = {}
        self.peak_together_mb = 0.0  # commands running together + this process
        self.peak_commands_mb = 0.0  # the commands alone (what the demo adds to a host process)
        self.cancelled = False

    @contextmanager
    def slot(self) -> Iterator[int]:
        """Wait for a free slot; yields its index (a progress-bar row). Granted by priority (the
        calling thread's `priority()`: side work waits for chains), then first come, first served."""
        me = (priority(), next(self._tickets))
        with self._cv:
            self._queue.append(me)
            while not self.cancelled and not (self._free and min(self._queue) == me):
                self._cv.wait()
            self._queue.remove(me)
            self._cv.notify_all()
            if self.cancelled:
                raise Cancelled("the demo is stopping")
            index = self._free.pop(0)
        try:
            yield index
        finally:
            with self._cv:
                self._free.append(index)
                self._free.sort()
                self._cv.notify_all()

    def env(self) -> dict[str, str]:
        """Thread settings for a command: with several slots each command gets its share of the cores
        (torch reads OMP_NUM_THREADS at start-up; a recipe's `train.threads` still wins)."""
        if self.jobs == 1:
            return {}
        n = str(self.threads)
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}

    # -- the commands running now
    def started(self, proc: subprocess.Popen) -> None:
        with self._cv:
            if self.cancelled:
                proc.terminate()
            self._procs[proc.pid] = proc

    def sample(self, pid: int) -> None:
        """Record `pid`'s current resident memory; the peak of the sum over the running commands and
        this process (its current size: a test runner's lifetime peak is not the demo's) is kept."""
        rss, own = proc_rss_mb(pid), proc_rss_mb(os.getpid()) or 0.0
        with self._cv:
            if rss is not None and pid in self._procs:
                self._rss[pid] = rss
            self._peak(own, sum(self._rss.values()))

    def _peak(self, own: float, commands: float) -> None:
        self.peak_commands_mb = max(self.peak_commands_mb, commands)
        self.peak_together_mb = max(self.peak_together_mb, own + commands)

    def finished(self, pid: int, peak_mb: float) -> None:
        own = proc_rss_mb(os.getpid()) or 0.0
        with self._cv:
            # the command's own peak (wait4) may exceed the last sample: count it with the others
            self._peak(own, sum(v for p, v in self._rss.items() if p != pid) + peak_mb)
            self._procs.pop(pid, None)
            self._rss.pop(pid, None)

    def cancel(self) -> None:
        """Stop: terminate the running commands (a trainer checkpoints on SIGTERM) and refuse new ones."""
        with self._cv:
            self.cancelled = True
            procs = list(self._procs.values())
            self._cv.notify_all()
        for p in procs:
            if p.poll() is None:
                p.terminate()


def proc_rss_mb(pid: int) -> float | None:
    """Current resident memory of process `pid` in MiB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


_LOCAL = threading.local()


def priority() -> int:
    """The calling thread's slot priority (0 first; `run_parallel`'s side work gets one more)."""
    return getattr(_LOCAL, "priority", 0)


def run_parallel(thunks: list[Callable[[], T]], workers: int, side: int = 0) -> list[T]:
    """Call every thunk in its own thread (one after another when `workers` is 1); results in input order.
    The last `side` thunks are side work: their commands take a slot only when no command of the
    others (or of other stages) waits, so the long chains of dependent commands go first. All
    thunks run to their end; the first exception (in input order) is then raised."""
    if len(thunks) <= 1 or workers <= 1:
        return [t() for t in thunks]
    base = priority()

    def call(thunk: Callable[[], T], prio: int) -> T:
        _LOCAL.priority = prio
        return thunk()

    prios = [base + (i >= len(thunks) - side) for i in range(len(thunks))]
    # a thread per thunk: the command slots, not the threads, limit what runs at once
    with ThreadPoolExecutor(max_workers=len(thunks)) as ex:
        futures = [ex.submit(call, t, p) for t, p in zip(thunks, prios)]
        errors: list[BaseException] = []
        out: list[Any] = []
        for f in futures:
            try:
                out.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others finished
                errors.append(e)
        if errors:
            raise errors[0]
        return out
