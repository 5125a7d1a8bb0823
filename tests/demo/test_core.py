"""The demo's stage registry, resumable runner and results.json, on stages defined here that run
real (small) `xmodal` commands in subprocesses."""

import json

import pytest

from xmodal.demo import core
from xmodal.demo.core import Claim, StageResult, read_results, register_stage, run_demo

CALLS: dict[str, int] = {}


@pytest.fixture
def stages():
    """Register two tiny stages for one test, then remove them from the global registry."""
    names = ["t-corpus", "t-broken"]

    @register_stage("t-corpus", order=101, title="write a grammar corpus")
    def corpus(ctx):
        CALLS["t-corpus"] = CALLS.get("t-corpus", 0) + 1
        out = ctx.dir / "corpus.txt"
        if not out.is_file():
            ctx.xmodal("corpus", "textkd", "corpus", "--out", out, "--lines", ctx.settings["lines"])
        n = len(out.read_text().splitlines())
        return StageResult(metrics={"lines": n}, claims=[Claim("all lines written", n == ctx.settings["lines"], f"{n} lines")])

    @register_stage("t-broken", order=102, title="a command that fails")
    def broken(ctx):
        CALLS["t-broken"] = CALLS.get("t-broken", 0) + 1
        ctx.xmodal("bad", "train", ctx.dir / "missing.yaml")
        return StageResult()

    @register_stage("t-bug", order=103, title="a stage with a bug")
    def bug(ctx):
        return {}["missing"]

    names.append("t-bug")
    CALLS.clear()
    yield names
    for n in names:
        core.STAGES._entries.pop(n, None)


def settings_of(lines):
    return lambda name, quick: {"lines": lines if not quick else lines // 2}


def test_stages_run_in_order_and_results_are_typed(stages, tmp_path):
    run = run_demo(tmp_path, only=stages, progress=False, report=False, settings=settings_of(6))
    assert list(run.results) == stages
    ok, bad = run.results["t-corpus"], run.results["t-broken"]
    assert ok.status == "done" and ok.metrics == {"lines": 6} and ok.claims[0].passed
    assert ok.peak_rss_mb > 10 and ok.cpu_seconds > 0 and "corpus" in ok.steps
    # a failing command makes its stage "failed" with the log to read; the run goes on
    assert bad.status == "failed" and "bad" in bad.reason and "logs/bad.log" in bad.reason
    # an unexpected error fails only its stage, with the traceback kept
    assert run.results["t-bug"].status == "failed" and "internal error KeyError" in run.results["t-bug"].reason
    assert "KeyError" in (tmp_path / "t-bug" / "logs" / "traceback.txt").read_text()
    assert run.failed == ["t-broken", "t-bug"]
    saved = read_results(tmp_path)
    assert saved["t-corpus"] == ok
    body = json.loads((tmp_path / "results.json").read_text())
    assert body["claims"] == [{"stage": "t-corpus", "name": "all lines written", "passed": True, "detail": "6 lines",
                               "numbers": {}, "checked": True}]
    assert body["mode"] == "full" and body["peak_rss_mb"] >= ok.peak_rss_mb
    # a rerun retries the failed stage and reuses the finished one
    run_demo(tmp_path, only=stages, progress=False, report=False, settings=settings_of(6))
    assert CALLS == {"t-corpus": 1, "t-broken": 2}


def test_a_finished_stage_is_reused_and_a_changed_one_redone(stages, tmp_path):
    run_demo(tmp_path, only="t-corpus", progress=False, report=False, settings=settings_of(6))
    stamp = (tmp_path / "t-corpus" / "corpus.txt").stat().st_mtime_ns
    run_demo(tmp_path, only="t-corpus", progress=False, report=False, settings=settings_of(6))
    assert CALLS["t-corpus"] == 1  # reused from results.json
    # other settings: the stage folder is cleared (its runs were made with the old ones) and redone
    run = run_demo(tmp_path, only="t-corpus", progress=False, report=False, settings=settings_of(8))
    assert CALLS["t-corpus"] == 2 and run.results["t-corpus"].metrics == {"lines": 8}
    assert (tmp_path / "t-corpus" / "corpus.txt").stat().st_mtime_ns != stamp
    # --quick is another mode: redone; the full result is replaced
    run = run_demo(tmp_path, only="t-corpus", quick=True, progress=False, report=False, settings=settings_of(8))
    assert CALLS["t-corpus"] == 3 and run.results["t-corpus"].mode == "quick" and run.results["t-corpus"].metrics == {"lines": 4}


def test_stage_selection_names_unknown_stages():
    from xmodal.errors import ConfigError

    names = core.stage_names()
    assert names == ["media", "gdt", "textkd", "cavmae", "mfh", "ccl"]
    assert core.select("gdt,media") == ["media", "gdt"]
    with pytest.raises(ConfigError, match="unknown stage 'gtd'.*did you mean 'gdt'"):
        core.select("gtd")


def test_settings_table_has_both_modes_for_every_stage():
    from xmodal.demo.settings import SETTINGS, stage_settings

    assert set(SETTINGS) == set(core.stage_names())
    for name, row in SETTINGS.items():
        assert set(row) == {"full", "quick"} and set(row["full"]) == set(row["quick"]), name
    s = stage_settings("gdt", True)
    s["max_steps"] = -1
    assert stage_settings("gdt", True)["max_steps"] > 0  # a copy


def test_cli_lists_the_stages(capsys):
    from xmodal.cli import main

    assert main(["demo", "--list"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == core.stage_names()


def test_cli_rejects_jobs_below_one(tmp_path, capsys):
    from xmodal.cli import main

    assert main(["demo", "--jobs", "0", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--jobs: needs at least 1 (got 0)" in err[0]
    assert not (tmp_path / "results.json").exists()
