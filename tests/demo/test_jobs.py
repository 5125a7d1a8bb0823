"""The demo's command slots: priority then first-come order, results in order, errors after all
thunks ended, memory of commands running together, stopping; and stages running side by side
with one waiting for another's result."""

import subprocess
import sys
import threading
import time

import pytest

from xmodal.demo import core
from xmodal.demo.core import StageResult, register_stage, run_demo
from xmodal.demo.jobs import Cancelled, Slots, priority, run_parallel


def _wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_slots_go_to_chains_first_then_in_request_order():
    slots = Slots(1, cpus=2)
    order: list[str] = []

    def ask(name: str, prio: int):
        from xmodal.demo import jobs

        jobs._LOCAL.priority = prio
        with slots.slot():
            order.append(name)

    with slots.slot() as row:  # the only slot is busy while the others queue up
        assert row == 0
        threads = []
        for name, prio in [("side-1", 1), ("chain-1", 0), ("side-2", 1), ("chain-2", 0)]:
            t = threading.Thread(target=ask, args=(name, prio))
            t.start()
            threads.append(t)
            queued = len(threads)
            _wait_for(lambda: len(slots._queue) == queued)  # noqa: B023 - waited for right here
    for t in threads:
        t.join()
    assert order == ["chain-1", "chain-2", "side-1", "side-2"]
    assert slots.env() == {} and Slots(2, cpus=4).env()["OMP_NUM_THREADS"] == "2"


def test_run_parallel_keeps_order_overlaps_and_raises_after_all_ended():
    started, ended = [], []

    def job(i: int, fail: bool = False):
        started.append(i)
        time.sleep(0.2)
        ended.append(i)
        if fail:
            raise ValueError(f"job {i}")
        return i * 10

    t0 = time.perf_counter()
    assert run_parallel([lambda i=i: job(i) for i in range(3)], workers=3) == [0, 10, 20]
    assert time.perf_counter() - t0 < 0.55  # side by side, not 0.6 s one after another
    ended.clear()
    with pytest.raises(ValueError, match="job 1"):
        run_parallel([lambda: job(0), lambda: job(1, fail=True), lambda: job(2, fail=True)], workers=2)
    assert sorted(ended) == [0, 1, 2]  # the others ran to their end first
    # side work runs one priority lower; one worker runs everything in order, in this thread
    prios = run_parallel([priority, priority, priority], workers=2, side=1)
    assert prios == [0, 0, 1]
    assert run_parallel([lambda: threading.current_thread().name] * 2, workers=1) == [threading.current_thread().name] * 2


def test_memory_of_commands_running_together_and_cancel():
    slots = Slots(2, cpus=2)
    procs = [subprocess.Popen([sys.executable, "-c", "import time; b = b\"x\" * (60 << 20); time.sleep(30)"]) for _ in range(2)]
    for p in procs:
        slots.started(p)
    time.sleep(1.0)
    for p in procs:
        slots.sample(p.pid)
    assert slots.peak_commands_mb > 2 * 60  # both commands' memory counted at once
    assert slots.peak_together_mb > slots.peak_commands_mb  # and this process's
    slots.cancel()
    assert all(p.wait(10) != 0 for p in procs)  # terminated
    with pytest.raises(Cancelled):
        with slots.slot():
            pass


@pytest.fixture
def pair():
    names = ["t-first", "t-second"]

    @register_stage("t-first", order=111, title="writes a corpus, slowly")
    def first(ctx):
        out = ctx.dir / "corpus.txt"
        ctx.parallel(*(lambda i=i: ctx.xmodal(f"corpus{i}", "textkd", "corpus", "--out", out.with_suffix(f".{i}.txt"),
                                               "--lines", 5) for i in range(2)))  # fmt: skip
        return StageResult(metrics={"files": len(list(ctx.dir.glob("corpus.*.txt")))})

    @register_stage("t-second", order=112, title="needs the first stage's result")
    def second(ctx):
        got = ctx.stage_result("t-first")
        return StageResult(metrics={"seen": got.metrics["files"] if got else -1})

    yield names
    for n in names:
        core.STAGES._entries.pop(n, None)


def test_stages_run_side_by_side_and_wait_for_each_others_results(pair, tmp_path):
    run = run_demo(tmp_path, only=pair, progress=False, report=False, settings=lambda n, q: {}, jobs=2)
    assert list(run.results) == pair  # stage order, whatever order they finished in
    assert run.results["t-first"].metrics == {"files": 2}
    assert run.results["t-second"].metrics == {"seen": 2}  # waited for t-first, though it started beside it
    assert set(run.results["t-first"].steps) == {"corpus0", "corpus1"}
