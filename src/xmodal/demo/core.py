"""The demo pipeline: registered stages, typed results, one results.json, resumable runs.

A stage is a function ``fn(ctx: StageContext) -> StageResult`` registered with
``@register_stage(name, order=..., title=...)`` in a module of `xmodal.demo.stages` (discovered on
first lookup, like every other registry). `run_demo` runs the selected stages in order, each in
its own folder ``OUT/<stage>/``, and writes ``OUT/results.json`` after every stage, so a rerun
reuses every stage that finished with the same settings and redoes the others. Inside a stage,
`StageContext.train` / `StageContext.eval` reuse a finished run folder (its final.json / the eval
JSON) too, so an interrupted stage resumes at its last finished command.

Every number a stage reports comes from a real run of the `xmodal` CLI (a subprocess: its memory
is returned to the OS when it ends, and its peak RSS is measured with ``os.wait4``) or from a
direct Python call on a run's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from xmodal.demo.jobs import Slots, default_jobs, proc_rss_mb, run_parallel
from xmodal.errors import ConfigError, XmodalError
from xmodal.registry import Registry

STAGES = Registry("demo stage", ("xmodal.demo.stages",))
RESULTS = "results.json"


def register_stage(name: str, *, order: int, title: str):
    """Decorator: register ``fn(ctx) -> StageResult`` as demo stage `name` (run in `order`)."""
    return STAGES.register(name, order=order, title=title)


# ------------------------------------------------------------------------------------ results
@dataclass
class Claim:
    """A key claim checked on the stage's own numbers (`numbers`); `passed` is the verdict."""

    name: str
    passed: bool
    detail: str  # the numbers in words, e.g. "a->v R@1 63.2 % vs chance 10.0 %"
    numbers: dict[str, float] = field(default_factory=dict)
    checked: bool = True  # False: shown for information, not asserted by CI (a known limitation)


@dataclass
class Bars:
    """An accuracy bar chart: one bar per label, with a reference line (chance or a baseline)."""

    title: str
    labels: list[str]
    values: list[float]
    ylabel: str = "accuracy (%)"
    reference: float | None = None
    reference_label: str = "chance"


@dataclass
class StageResult:
    stage: str = ""
    title: str = ""
    status: Literal["done", "skipped", "failed"] = "done"
    reason: str = ""  # why it was skipped or failed
    mode: str = ""  # quick | full
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # largest resident set of any process of the stage (MiB)
    cpu_seconds: float = 0.0  # user + system CPU time of the stage's processes (load-independent)
    metrics: dict[str, float] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    bars: list[Bars] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # label -> run folder (loss curves), relative to OUT
    figures: dict[str, str] = field(default_factory=dict)  # caption -> PNG, relative to OUT
    steps: dict[str, float] = field(default_factory=dict)  # command label -> seconds

    @classmethod
    def from_dict(cls, d: dict) -> StageResult:
        d = dict(d)
        d["claims"] = [Claim(**c) for c in d.get("claims", [])]
        d["bars"] = [Bars(**b) for b in d.get("bars", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def skipped(reason: str) -> StageResult:
    return StageResult(status="skipped", reason=reason)


def read_results(out: str | Path) -> dict[str, StageResult]:
    path = Path(out) / RESULTS
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: StageResult.from_dict(r) for name, r in data.get("stages", {}).items()}


def in_stage_order(results: dict[str, StageResult]) -> dict[str, StageResult]:
    """`results` ordered by the stages' registered order (unknown stages last)."""
    order = {n: STAGES.entry(n).meta["order"] for n in results if n in STAGES}
    return {n: results[n] for n in sorted(results, key=lambda n: order.get(n, 99))}


def write_results(out: str | Path, results: dict[str, StageResult], **extra: Any) -> Path:
    path = Path(out) / RESULTS
    stages = {n: asdict(r) for n, r in in_stage_order(results).items()}
    claims = [{"stage": n, **asdict(c)} for n, r in results.items() for c in r.claims]
    body = {"stages": stages, "claims": claims, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)
    return path


def repo_root() -> Path:
    """The checkout holding recipes/ (an editable install: three levels above xmodal/)."""
    import xmodal

    return Path(xmodal.__file__).resolve().parents[2]


def recipe_path(rel: str) -> Path:
    """A recipe named relative to the repository (recipes/...), found from any working folder."""
    for base in (repo_root(), Path.cwd()):
        if (base / rel).is_file():
            return base / rel
    raise ConfigError(f"{rel}: recipe not found under {repo_root()} or {Path.cwd()}")


def recipe_glob(pattern: str) -> list[Path]:
    """Recipes matching a repository-relative glob (sorted; [] when none)."""
    for base in (repo_root(), Path.cwd()):
        found = sorted(base.glob(pattern))
        if found:
            return found
    return []


# ------------------------------------------------------------------------------------ context
def _rss_mb(ru: Any) -> float:
    return ru.ru_maxrss / 1024.0  # Linux: KiB


class StageContext:
    """What a stage gets: its folder, its settings, earlier results and CLI runners."""

    def __init__(self, name: str, out: Path, quick: bool, settings: dict[str, Any],
                 previous: dict[str, StageResult], progress: bool = True, slots: Slots | None = None,
                 lookup: Callable[[str], StageResult | None] | None = None):
        self.name, self.out, self.quick, self.settings = name, out, quick, settings
        self.dir = out / name
        self.previous = previous
        self.progress = progress
        self.slots = slots or Slots(1)
        self._lookup = lookup or previous.get
        self._lock = threading.Lock()
        self.peak_rss_mb = 0.0
        self.cpu_seconds = 0.0
        self.steps: dict[str, float] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)

    def rel(self, path: str | Path) -> str:
        return os.path.relpath(Path(path), self.out)

    def say(self, text: str) -> None:
        if self.progress:
            print(f"  [{self.name}] {text}", file=sys.stderr, flush=True)

    def stage_result(self, name: str) -> StageResult | None:
        """Stage `name`'s result: waits for it when it runs in this demo, else the one in results.json.
        (Never call it from inside a command slot: the awaited stage may need that slot.)"""
        return self._lookup(name)

    def parallel(self, *thunks: Callable[[], Any], side: int = 0) -> list[Any]:
        """Run independent steps (each typically a `train` / `xmodal` call) side by side, as many at
        once as the demo has slots; results in order, the first error raised after all ended. The
        last `side` thunks are side work (e.g. a baseline beside a teacher -> students chain): their
        commands get a slot only when no other command waits."""
        return run_parallel(list(thunks), self.slots.jobs, side)

    # -- subprocesses
    def xmodal(self, label: str, *argv: str, watch: Path | None = None, total: int | None = None) -> str:
        """Run ``xmodal ARGV`` in a subprocess (stdout + stderr to logs/<label>.log); returns stdout.

        While it runs, a progress bar follows the train steps logged in `watch`/metrics.jsonl
        (out of `total`). A failure raises XmodalError naming the log and its last line."""
        log_path = self.dir / "logs" / f"{label}.log"
        cmd = [sys.executable, "-m", "xmodal.cli", *map(str, argv)]
        env = {**os.environ, "XMODAL_PROGRESS": "0", "PYTHONUNBUFFERED": "1", **self.slots.env()}
        with self.slots.slot() as row:
            t0 = time.perf_counter()
            bar = _Bar(f"{self.name}: {label}", total, self.progress, row)
            with open(log_path, "w") as logf:
                logf.write("$ xmodal " + " ".join(map(str, argv)) + "\n")
                logf.flush()
                out_path = log_path.with_suffix(".out")
                with open(out_path, "w") as outf:
                    proc = subprocess.Popen(cmd, stdout=outf, stderr=logf, env=env)
                    self.slots.started(proc)
                    status, ru = None, None
                    try:
                        while status is None:
                            pid, st, r = os.wait4(proc.pid, os.WNOHANG)
                            if pid:
                                status, ru = st, r
                                break
                            self.slots.sample(proc.pid)
                            bar.update(_last_step(watch))
                            time.sleep(0.5)
                    except BaseException:  # interrupted: stop the command too (a trainer checkpoints on SIGTERM)
                        proc.terminate()
                        proc.wait(60)
                        self.slots.finished(proc.pid, 0.0)
                        bar.close()
                        raise
                    proc.returncode = os.waitstatus_to_exitcode(status)
            bar.close()
            seconds = time.perf_counter() - t0
            self.slots.finished(proc.pid, _rss_mb(ru))
        with self._lock:
            self.steps[label] = round(seconds, 1)
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(ru))
            self.cpu_seconds += ru.ru_utime + ru.ru_stime
        stdout = out_path.read_text()
        if proc.returncode != 0:
            tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise XmodalError(f"{label}: `xmodal {' '.join(map(str, argv[:3]))} ...` exited with {proc.returncode} "
                              f"(log {self.rel(log_path)}): {tail[0]}")  # fmt: skip
        self.say(f"{label}: {seconds:.1f} s ({ru.ru_utime + ru.ru_stime:.1f} s CPU), peak {_rss_mb(ru):.0f} MiB")
        return stdout

    def train(self, label: str, recipe: str | Path, *sets: str, total: int | None = None) -> dict:
        """`xmodal train RECIPE --out DIR/label --set ...`; a finished run (final.json) is reused and
        an interrupted one resumed (`--resume auto`: from its newest checkpoint, if any)."""
        run = self.dir / label
        final = run / "final.json"
        if not final.is_file():
            args = ["train", str(recipe), "--out", str(run), "--set", "train.tensorboard=false", "--set", "train.progress=false"]
            if run.exists():  # an interrupted run of the same settings: continue from its last checkpoint
                args += ["--resume", "auto"]
            for s in sets:
                args += ["--set", s]
            self.xmodal(label, *args, watch=run, total=total)
        else:
            self.say(f"{label}: reused {self.rel(run)}")
        return json.loads(final.read_text())

    def json_of(self, label: str, *argv: str, flag: str = "--json") -> dict:
        """Run a CLI command that writes metrics JSON with `flag` FILE; a written file is reused."""
        path = self.dir / f"{label}.json"
        if not path.is_file():
            tmp = path.with_suffix(".json.tmp")
            self.xmodal(label, *argv, flag, str(tmp))
            tmp.replace(path)
        else:
            self.say(f"{label}: reused {self.rel(path)}")
        return json.loads(path.read_text())

    def result(self, **kw: Any) -> StageResult:
        return StageResult(**kw)


def _last_step(run: Path | None) -> int | None:
    if run is None:
        return None
    path = run / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for ln in reversed(lines):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            continue
        return int(row.get("step", 0))
    return None


class _Bar:
    """A tqdm bar over train steps (or elapsed time only) on stderr; silent when disabled."""

    def __init__(self, desc: str, total: int | None, enabled: bool, row: int = 0):
        self.bar = None
        if enabled and sys.stderr.isatty():  # a log file gets the one line per command instead
            from tqdm.auto import tqdm

            # one row per command slot: commands running side by side each keep their own bar
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, mininterval=0.5,
                            position=row, bar_format=None if total else "{desc}: {elapsed}")  # fmt: skip

    def update(self, step: int | None) -> None:
        if self.bar is None:
            return
        if step is not None and self.bar.total:
            self.bar.n = min(step, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------------------------------- runner
@dataclass
class DemoRun:
    out: Path
    results: dict[str, StageResult]
    seconds: float
    peak_rss_mb: float
    report: Path | None = None

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.results.items() if r.status == "failed"]


def stage_names() -> list[str]:
    return sorted(STAGES.names(), key=lambda n: STAGES.entry(n).meta["order"])


def select(only: str | list[str] | None) -> list[str]:
    names = stage_names()
    if not only:
        return names
    wanted = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    for w in wanted:
        if w not in names:
            from xmodal.errors import closest

            raise ConfigError(f"--only: unknown stage '{w}'{closest(w, names)}; stages: {', '.join(names)}")
    return [n for n in names if n in wanted]


def _stamp(mode: str, settings: dict) -> str:
    return json.dumps({"mode": mode, "settings": settings}, sort_keys=True)


def run_stage(name: str, out: Path, *, quick: bool, settings: dict, previous: dict[str, StageResult],
              progress: bool = True, slots: Slots | None = None,
              lookup: Callable[[str], StageResult | None] | None = None) -> StageResult:
    """One stage in OUT/<name>/ (wiped first when it holds runs made with other settings)."""
    mode = "quick" if quick else "full"
    entry = STAGES.entry(name)
    stage_dir = out / name
    stamp = stage_dir / "settings.json"
    if stamp.is_file() and stamp.read_text() != _stamp(mode, settings):
        shutil.rmtree(stage_dir)  # runs of other settings would be reused as if they were these
    stage_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(_stamp(mode, settings))
    ctx = StageContext(name, out, quick, settings, previous, progress, slots, lookup)
    t0 = time.perf_counter()
    self0 = resource.getrusage(resource.RUSAGE_THREAD)
    try:
        res = entry.obj(ctx)
    except XmodalError as e:
        res = StageResult(status="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a bug in one stage must not hide the others' results
        import traceback

        (stage_dir / "logs" / "traceback.txt").write_text(traceback.format_exc())
        res = StageResult(status="failed", reason=f"internal error {type(e).__name__}: {e} (traceback in {name}/logs/traceback.txt)")
    res.stage, res.title, res.mode, res.settings = name, entry.meta["title"], mode, settings
    res.seconds = round(time.perf_counter() - t0, 1)
    res.peak_rss_mb = round(max(ctx.peak_rss_mb, res.peak_rss_mb), 1)
    self1 = resource.getrusage(resource.RUSAGE_THREAD)  # in-process work of this stage: files, figures
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    res.cpu_seconds = round(ctx.cpu_seconds + own, 1)
    res.steps = {**ctx.steps, **res.steps}
    return res


def run_demo(out: str | Path, *, quick: bool = False, only: str | list[str] | None = None, progress: bool = True,
             report: bool = True, settings: Callable[[str, bool], dict] | None = None,
             jobs: int | None = None) -> DemoRun:
    """Run the selected stages (all by default) into `out`, reusing finished ones; write the report.

    Stages run side by side, each in its own thread, and their commands share `jobs` command slots
    (default: one per core, at most 4; 1 runs everything one after another). A stage that needs
    another's result waits for it with `ctx.stage_result(name)`."""
    from xmodal.demo.settings import stage_settings

    settings = settings or stage_settings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "full"
    names = select(only)
    results = read_results(out)
    slots = Slots(jobs or default_jobs())
    t0 = time.perf_counter()
    todo: list[tuple[str, dict]] = []
    for i, name in enumerate(names, 1):
        want = settings(name, quick)
        old = results.get(name)
        if old is not None and old.status == "done" and old.mode == mode and old.settings == want:
            if progress:
                print(f"[{i}/{len(names)}] {name}: reused from {RESULTS} ({old.seconds:.0f} s when it ran)", file=sys.stderr)
        else:
            todo.append((name, want))
    futures: dict[str, Future] = {}
    submitted = threading.Event()

    def lookup(stage: str) -> StageResult | None:
        submitted.wait()
        return futures[stage].result() if stage in futures else results.get(stage)

    def one(name: str, want: dict) -> StageResult:
        if progress:
            print(f"[{name}] {STAGES.entry(name).meta['title']}", file=sys.stderr, flush=True)
        return run_stage(name, out, quick=quick, settings=want, previous=dict(results), progress=progress,
                         slots=slots, lookup=lookup)  # fmt: skip

    with ThreadPoolExecutor(max_workers=max(1, len(todo)), thread_name_prefix="stage") as ex:
        try:
            for name, want in todo:
                futures[name] = ex.submit(one, name, want)
            submitted.set()
            stage_of = {f: n for n, f in futures.items()}
            for fut in as_completed(stage_of):
                name = stage_of[fut]
                results[name] = res = fut.result()
                if progress:
                    print(f"[{name}] {_status_line(res)}", file=sys.stderr, flush=True)
                write_results(out, results, mode=mode)
        except BaseException:  # Ctrl-C / SIGTERM: stop every running command, keep what finished
            submitted.set()
            slots.cancel()
            raise
    results = in_stage_order(results)  # completion order -> stage order
    seconds = time.perf_counter() - t0
    main_mb = proc_rss_mb(os.getpid()) or 0.0  # now, not this process's lifetime peak (a test runner's)
    peak = max([main_mb, slots.peak_together_mb] + [r.peak_rss_mb for r in results.values()])
    write_results(out, results, mode=mode, last_run_seconds=round(seconds, 1), peak_rss_mb=round(peak, 1),
                  main_process_rss_mb=round(main_mb, 1), commands_peak_rss_mb=round(slots.peak_commands_mb, 1),
                  jobs=slots.jobs)  # fmt: skip
    run = DemoRun(out, results, seconds, peak)
    if report:
        from xmodal.demo.report import write_report

        run.report = write_report(out)
    return run


def _status_line(r: StageResult) -> str:
    if r.status != "done":
        return f"{r.status.upper()}: {r.reason}"
    ok = sum(c.passed for c in r.claims)
    return f"done in {r.seconds:.0f} s ({r.cpu_seconds:.0f} s CPU), peak {r.peak_rss_mb:.0f} MiB, claims {ok}/{len(r.claims)} hold"
