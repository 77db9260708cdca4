"""Pairwise judging against the baseline: order swapping, tie and position rules, caching, failures, matrix
columns — against the fault-injecting app and a real llama_cpp.server on loopback."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from conftest import FAST, run_runner, sweep_dirs
from runner.identity import build_id
from runner.judges import make_judge, pairwise
from runner.judges.aggregate import pairwise_outcomes
from runner.judges.base import JudgeItem
from runner.records import Generation, Judgment, PromptResult, read_cell_record
from runner.store import Store
from runner.testing.fault_server import FaultServerProcess
from test_judge import judge_cfg

ITEM = JudgeItem(prompt="What is 2+2?", category="math", answer="4, the build's", truncated=False, reference=None,
                 generation_key="g", pair_answer="5, the baseline's")


def test_both_orders_show_the_pair_without_naming_either():
    first = json.dumps(pairwise.build_messages(ITEM))
    second = json.dumps(pairwise.build_messages(JudgeItem(**{**ITEM.__dict__, "order": 1})))
    assert first.index("the baseline's") < first.index("the build's")
    assert second.index("the build's") < second.index("the baseline's")
    for text in (first, second):
        assert "baseline" not in text.replace("the baseline's", "") and "gguf" not in text.lower()


@pytest.mark.parametrize("winner,order,expected", [("A", 0, "baseline"), ("B", 0, "build"), ("A", 1, "build"),
                                                   ("B", 1, "baseline"), ("tie", 0, "tie"), ("tie", 1, "tie")])
def test_a_position_verdict_as_the_build_sees_it(winner, order, expected):
    assert pairwise.for_build(winner, order) == expected


@pytest.mark.parametrize("first,second,expected", [
    ("build", "build", ("win", False)), ("baseline", "baseline", ("loss", False)), ("tie", "tie", ("tie", False)),
    ("build", "baseline", ("tie", True)),  # each order preferred the answer in one position: a position bias
    ("build", "tie", ("tie", True)), (None, "build", None)])
def test_tie_and_position_rules(first, second, expected):
    assert pairwise.outcome(first, second) == expected


def test_pairwise_replies_are_validated():
    assert pairwise.parse_reply('{"reasoning": "B is right", "winner": "B"}').winner == "B"
    for bad in ('{"reasoning": "x", "winner": "C"}', '{"winner": "A"}', "", "not json"):
        with pytest.raises(Exception, match="winner|missing|empty|JSON"):
            pairwise.parse_reply(bad)


def _result(verdicts: list[tuple[int, str | None]]) -> PromptResult:
    gen = Generation("a", [1], 1, 1, "stop", 0.1, 10.0, float("nan"), 0.1)
    js = [Judgment("m", "pairwise-v1", scores={} if w else None, winner=w, order=o, error=None if w else "boom")
          for o, w in verdicts]
    return PromptResult("p", "c", 0, "t", None, "r", "sha", "k", gen, "a", judgments=js)


def test_outcomes_pair_the_two_orders_repeat_by_repeat():
    r = _result([(0, "build"), (0, "baseline"), (1, "build"), (1, None)])  # two judge repeats, one failed
    assert pairwise_outcomes(r) == [("win", False, False)]  # the failed repeat is dropped, never counted as a loss


def test_pairwise_judge_caches_each_order_and_records_failures_as_null(tmp_path):
    with FaultServerProcess(fault_rate=0.0) as server:
        judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=server.base_url, mode="pairwise",
                                     timeout_s=10, max_retries=0))
        items = [JudgeItem(**{**ITEM.__dict__, "order": o, "generation_key": f"g{i}"}) for i in range(3) for o in (0, 1)]
        with judge:
            first = judge.judge_all(items, Store(tmp_path))
            assert server.stats()["requests"] == 6
            again = judge.judge_all(items, Store(tmp_path))
            assert server.stats()["requests"] == 6  # every (pair, order) cached
    assert [j.winner for j in first] == [j.winner for j in again]
    assert all(j.winner in ("build", "baseline", "tie") and j.order == i.order for j, i in zip(first, items))
    with FaultServerProcess(fault_rate=1.0, faults="out_of_range") as server:
        judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=server.base_url, mode="pairwise",
                                     timeout_s=10, max_retries=0))
        with judge:
            failed = judge.judge_all(items[:2], Store(tmp_path / "other"))
    assert all(j.scores is None and j.winner is None and "winner" in j.error for j in failed)


def test_identical_answers_are_a_tie_without_asking_the_judge(tmp_path):
    with FaultServerProcess(fault_rate=1.0, faults="500") as server:  # any request would fail
        judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=server.base_url, mode="pairwise",
                                     timeout_s=10, max_retries=0))
        same = [JudgeItem(**{**ITEM.__dict__, "pair_answer": ITEM.answer, "order": o}) for o in (0, 1)]
        with judge:
            out = judge.judge_all(same, Store(tmp_path))
        assert server.stats()["requests"] == 0
    assert [(j.winner, j.order) for j in out] == [("tie", 0), ("tie", 1)] and "identical" in out[0].reasoning


def test_a_pairwise_sweep(tmp_path):
    with FaultServerProcess(fault_rate=0.0, seed=3) as server:
        args = ["-m", "format=gguf,mlx", "precision=fp16,q4_0", *FAST, "fidelity.enabled=false", "judge=openai",
                f"judge.base_url={server.base_url}", "judge.mode=pairwise", "judge.max_retries=0"]
        proc = run_runner(args, tmp_path, env={"OPENAI_API_KEY": "sk-test"})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        requests = server.stats()["requests"]
    sweep = sweep_dirs(tmp_path)[0]
    records = {build_id(r.cell.format, r.cell.precision): r for r in map(read_cell_record, sweep.glob("*/result.json")) if r.status == "ok"}
    baseline = {r.prompt_id: r.answer for r in records.pop("gguf_fp16").results}
    differing = sum(r.answer != baseline[r.prompt_id] for rec in records.values() for r in rec.results)
    assert requests == 2 * differing  # both orders of every pair whose answers differ; identical ones are ties
    df = pd.read_csv(sweep / "matrix.csv").set_index(["format", "precision"])
    base = df.loc[("gguf", "fp16")]
    assert math.isnan(base.win_rate) and "compares every other build with this cell" in base.judge_note
    for key in (("gguf", "q4_0"), ("mlx", "fp16")):
        row = df.loc[key]
        assert row.win_rate + row.tie_rate + row.loss_rate == pytest.approx(100)
        assert row.pairwise_judged == "7/7" and 0 <= row.identical_rate <= row.tie_rate
        # position inconsistency counts only the pairs the judge saw: none when every answer was identical
        assert pd.isna(row.position_inconsistency) if row.identical_rate == 100 else 0 <= row.position_inconsistency <= 100
        assert row.d_pairwise_net == pytest.approx(row.win_rate - row.loss_rate)
        assert not pd.isna(row.d_pairwise_net_p) and row.d_pairwise_net_sig in (True, False)
        assert row.d_pairwise_net_verdict in ("not_worse", "worse", "inconclusive") and row.d_pairwise_net_margin == 10
    rec = read_cell_record(sweep / "1" / "result.json")
    assert all(sorted(j.order for j in r.judgments) == [0, 1] for r in rec.results)
    report = (sweep / "report.md").read_text()
    assert "## Pairwise vs the baseline" in report and "Position inconsistency" in report


def test_a_real_llama_server_judges_pairs(tiny_gguf, tmp_path):
    pytest.importorskip("llama_cpp.server")
    server = {**judge_cfg("local")["server"], "start": True, "model_path": str(tiny_gguf), "n_ctx": 2048,
              "log_dir": str(tmp_path / "logs"), "startup_timeout_s": 60}
    judge = make_judge(judge_cfg("local", mode="pairwise", max_completion_tokens=48, timeout_s=60, max_retries=0,
                                 server=server))
    judge.check_ready()
    items = [JudgeItem(**{**ITEM.__dict__, "order": o}) for o in (0, 1)]
    with judge:
        out = judge.judge_all(items, Store(tmp_path / "store"))
    for j in out:  # the tiny model's verdicts are random: a valid winner, or a recorded failure with a reason
        assert j.input_tokens > 0 and j.order in (0, 1)
        assert (j.winner in ("build", "baseline", "tie")) if j.scores is not None else (j.error and j.winner is None)
