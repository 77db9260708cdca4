"""Judge library against real servers on 127.0.0.1: the fault-injecting app and llama_cpp.server."""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from runner.judges import make_judge, rubric
from runner.judges.aggregate import judge_columns
from runner.judges.base import JudgeItem
from runner.judges.local_server import free_port
from runner.records import Judgment, to_json
from runner.store import Store
from runner.testing.fault_server import FaultServerProcess

REPO = Path(__file__).resolve().parents[1]
FAST = dict(timeout_s=0.5, max_retries=2, backoff_base_s=0.02, backoff_max_s=0.1, concurrency=4)
CLEAN = {**FAST, "timeout_s": 10}  # exact request counts: no timeouts on a loaded machine


def judge_cfg(name: str, **overrides: Any) -> dict[str, Any]:
    """conf/judge/<name>.yaml, resolved, with test overrides."""
    cfg = OmegaConf.load(REPO / "conf" / "judge" / f"{name}.yaml")
    return {**OmegaConf.to_container(cfg, resolve=True), **overrides}


def items(n: int, tag: str = "") -> list[JudgeItem]:
    return [JudgeItem(prompt=f"What is {i} + {i}?{tag}", category=("math", "writing")[i % 2], answer=f"{2 * i}",
                      truncated=i % 7 == 0, reference=None, generation_key=f"gen-{tag}{i}") for i in range(n)]


def assert_honest(j: Judgment) -> None:
    """Valid scores in range, or a failure with a reason: never a 0-filled verdict."""
    if j.scores is not None:
        assert set(j.scores) == set(rubric.CRITERIA) and j.error is None and j.reasoning
        assert all(isinstance(v, int) and 0 <= v <= 10 for v in j.scores.values())
    else:
        assert j.error and j.attempts >= 1 and j.reasoning is None


@pytest.fixture(scope="module")
def faulty():
    with FaultServerProcess(fault_rate=0.3, seed=0, hang_s=5, retry_after=0.1) as server:
        yield server


@pytest.fixture(scope="module")
def clean():
    with FaultServerProcess(fault_rate=0.0) as server:
        yield server


def test_faults_are_retried_or_recorded_never_zero_filled(faulty, tmp_path):
    faulty.reset()
    store, batch = Store(tmp_path), items(20)
    judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=faulty.base_url, **FAST))
    judge.check_ready()
    with judge:
        first = judge.judge_all(batch, store)
    stats = faulty.stats()
    assert len(first) == len(batch)
    for j in first:
        assert_honest(j)
        if j.scores is not None:  # the fault server never sends 0: any 0 would be a fill
            assert min(j.scores.values()) >= 1
    assert any(j.scores is not None for j in first)
    assert set(stats["by_outcome"]) - {"ok"}, "the seed should inject some faults"
    assert len(batch) < stats["requests"] <= len(batch) * (FAST["max_retries"] + 1) * 2
    assert sum(j.attempts for j in first) == stats["requests"]

    faulty.reset()  # a re-run serves successes from the cache and retries only the failures
    second = judge.judge_all(batch, store)
    for a, b in zip(first, second):
        assert b.cache_hit == (a.scores is not None)
        if a.scores is not None:
            assert b.scores == a.scores
    assert (faulty.stats()["requests"] == 0) == all(j.scores is not None for j in first)


def test_cache_rerun_makes_zero_requests(clean, tmp_path):
    store, batch = Store(tmp_path), items(6, tag="c")
    batch.append(batch[0])  # a duplicate in the batch is judged once
    judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=clean.base_url, **CLEAN))
    clean.reset()
    first = judge.judge_all(batch, store)
    assert all(j.scores is not None and not j.cache_hit for j in first)
    assert clean.stats()["requests"] == 6
    clean.reset()
    second = judge.judge_all(batch, store)
    assert clean.stats()["requests"] == 0
    assert all(j.cache_hit for j in second) and [j.scores for j in second] == [j.scores for j in first]
    # judge params that change the verdict change the key
    other = make_judge(judge_cfg("openai", api_key="sk-x", base_url=clean.base_url, reasoning_effort="low",
                                 **CLEAN))
    other.judge_all(batch[:1], store)
    assert clean.stats()["requests"] == 1


def test_rate_limit_honours_retry_after(tmp_path):
    with FaultServerProcess(fault_rate=1.0, faults="429", retry_after=0.3) as server:
        judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=server.base_url,
                                     **{**FAST, "backoff_max_s": 0.01}))
        t0 = time.perf_counter()
        [j] = judge.judge_all(items(1, tag="r"), Store(tmp_path))
        waited = time.perf_counter() - t0
        assert server.stats()["requests"] == FAST["max_retries"] + 1
    assert j.scores is None and "RateLimitError" in j.error and j.attempts == FAST["max_retries"] + 1
    assert waited >= 0.3 * FAST["max_retries"]  # Retry-After, not the 0.01 s backoff cap


def test_text_response_format(clean, tmp_path):
    judge = make_judge(judge_cfg("local", model="m", base_url=clean.base_url, response_format="text", **CLEAN))
    assert "response_format" not in judge.request_params()
    [j] = judge.judge_all(items(1, tag="t"), Store(tmp_path))
    assert j.scores is not None and j.cost_usd is None


def test_missing_openai_key_fails_before_any_call(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = make_judge(judge_cfg("openai"))
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        judge.check_ready()


def test_make_judge_options():
    assert make_judge(judge_cfg("none")) is None
    with pytest.raises(ValueError, match=r"'gemini'.*none.*openai.*local"):
        make_judge({"name": "gemini"})
    with pytest.raises(ValueError, match="max_token"):
        make_judge(judge_cfg("openai", max_token=5))
    with pytest.raises(ValueError, match="base_url"):
        make_judge(judge_cfg("local", model="m")).check_ready()


def test_unreachable_server_records_failures(tmp_path):
    port = free_port()  # nothing listens there
    judge = make_judge(judge_cfg("openai", api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1", **FAST))
    out = judge.judge_all(items(3, tag="u"), Store(tmp_path))
    assert all(j.scores is None and "Connection" in j.error and j.attempts == FAST["max_retries"] + 1 for j in out)
    assert not Store(tmp_path).builds("judgment")  # failures are not cached


def test_cost_known_and_unknown(clean, tmp_path):
    priced = make_judge(judge_cfg("openai", api_key="sk-x", base_url=clean.base_url, **CLEAN))
    [j] = priced.judge_all(items(1, tag="p"), Store(tmp_path / "a"))
    assert j.input_tokens > 0 and j.output_tokens > 0
    assert j.cost_usd == pytest.approx((j.input_tokens * 0.05 + j.output_tokens * 0.40) / 1e6)
    unpriced = make_judge(judge_cfg("openai", api_key="sk-x", base_url=clean.base_url, price_per_1m_input=None,
                                    **CLEAN))
    [j] = unpriced.judge_all(items(1, tag="p"), Store(tmp_path / "b"))
    assert j.scores is not None and j.cost_usd is None


def test_api_key_never_written(faulty, tmp_path, monkeypatch):
    key = "sk-test-PLANTED-123"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    handler = logging.FileHandler(tmp_path / "debug.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        judge = make_judge(judge_cfg("openai", base_url=faulty.base_url, **FAST))
        judge.check_ready()
        with judge:
            ok = judge.judge_all(items(8, tag="s"), Store(tmp_path / "store"))
        dead = make_judge(judge_cfg("openai", base_url=f"http://127.0.0.1:{free_port()}/v1", **FAST))
        failed = dead.judge_all(items(2, tag="s"), Store(tmp_path / "store"))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    (tmp_path / "judgments.json").write_text(json.dumps([json.loads(to_json(j)) for j in ok + failed]))
    (tmp_path / "repr.txt").write_text(f"{judge!r} {judge.settings!r}")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 5
    for p in files:
        assert key.encode() not in p.read_bytes(), p


def test_schema_puts_reasoning_before_scores():
    schema = rubric.reply_schema()
    assert list(schema["properties"]) == ["reasoning", *rubric.CRITERIA]
    assert schema["required"][0] == "reasoning" and schema["additionalProperties"] is False
    strict = rubric.response_format("json_schema")
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert list(strict["json_schema"]["schema"]["properties"])[0] == "reasoning"
    assert rubric.response_format("json_object")["schema"]["properties"]["overall"]["enum"] == list(range(11))
    assert rubric.response_format("text") is None


def test_judge_messages_flag_truncation_and_hide_format():
    item = JudgeItem("Say hi", "chat", "hi", truncated=True, reference="hello", generation_key="g")
    text = json.dumps(rubric.build_messages(item))
    assert "cut at the token limit" in text and "<reference_answer>" in text
    for leak in ("gguf", "mlx", "q4_k_m", "fp16", "precision"):
        assert leak not in text.lower()
    plain = json.dumps(rubric.build_messages(JudgeItem("Say hi", "chat", "hi", False, None, "g")))
    assert "Note: the answer was cut" not in plain and "<reference_answer>" not in plain


@pytest.mark.parametrize("reply, problem", [
    ('{"reasoning": "ok", "overall": 7, "accuracy": 7, "coherence": 7}', "missing keys"),
    ('{"reasoning": "ok", "overall": 11, "accuracy": 7, "coherence": 7, "relevance": 7}', "outside"),
    ('{"reasoning": "ok", "overall": true, "accuracy": 7, "coherence": 7, "relevance": 7}', "integer"),
    ('{"reasoning": "ok", "overall": 7', "not valid JSON"),
    ("", "empty"),
])
def test_parse_reply_rejects(reply, problem):
    with pytest.raises(rubric.InvalidReply, match=problem):
        rubric.parse_reply(reply)


def test_parse_reply_extracts_from_text():
    v = rubric.parse_reply('Sure!\n```json\n{"reasoning": "line one\nline two", "overall": 7, "accuracy": 6, '
                           '"coherence": 8, "relevance": 9}\n```')
    assert v.scores == {"overall": 7, "accuracy": 6, "coherence": 8, "relevance": 9}


def test_request_params_by_model_family():
    p = make_judge(judge_cfg("openai", reasoning_effort="minimal")).request_params()
    assert p["max_completion_tokens"] == 8192 and p["reasoning_effort"] == "minimal" and "temperature" not in p
    local = make_judge(judge_cfg("local", model="qwen3-8b", base_url="http://127.0.0.1:1/v1"))
    p = local.request_params()
    assert p["max_tokens"] == 1024 and p["temperature"] == 0 and "max_completion_tokens" not in p
    assert p["response_format"]["type"] == "json_object"


def test_aggregate_ignores_nulls():
    def ok(overall: int, cost: float | None = 0.001) -> Judgment:
        return Judgment("m", "v1", scores=dict.fromkeys(rubric.CRITERIA, overall), reasoning="r", attempts=1,
                        cost_usd=cost)

    failed = Judgment("m", "v1", error="timeout", attempts=3, cost_usd=0.0)
    cols = judge_columns([("math", ok(8)), ("math", failed), ("writing", ok(6)), ("code", None)])
    assert cols["overall"] == 7.0 and cols["accuracy"] == 7.0
    assert cols["overall_math"] == 8.0 and cols["overall_writing"] == 6.0 and math.isnan(cols["overall_code"])
    assert cols["judged"] == "2/4" and cols["judge_failed"] == 1
    assert cols["judge_cost_usd"] == pytest.approx(0.002) and cols["judge_model"] == "m"
    assert judge_columns([("math", ok(5, cost=None))])["judge_cost_usd"] is None
    empty = judge_columns([("math", failed)])
    assert math.isnan(empty["overall"]) and empty["judged"] == "0/1"


@pytest.fixture(scope="session")
def llama_server_module():
    """Skips before the session's tiny GGUF is built when llama-cpp-python[server] is missing."""
    return pytest.importorskip("llama_cpp.server")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_local_llama_server_plumbing(llama_server_module, tiny_gguf, tmp_path):
    cfg = judge_cfg("local", max_completion_tokens=48, timeout_s=60, max_retries=1,
                    server={"start": True, "model_path": str(tiny_gguf), "n_ctx": 2048, "n_threads": 1,
                            "log_dir": str(tmp_path / "logs"), "extra_args": ["--n_batch", "256"],
                            "startup_timeout_s": 60})
    judge = make_judge(cfg)
    judge.check_ready()
    with judge:
        url = judge.base_url
        assert answers(url)
        out = judge.judge_all(items(2, tag="l"), Store(tmp_path))
    assert not answers(url)  # stopped on exit
    (server_log,) = (tmp_path / "logs").iterdir()  # kept after exit, with the settings it was given
    text = server_log.read_text()
    assert "n_ctx=2048 n_threads=1 " in text and re.search(r"n_batch\s+= 256", text)  # typed keys and extra_args
    for j in out:  # the tiny model's opinions are random: valid or recorded failed, never anything else
        assert_honest(j)
        assert j.input_tokens > 0, j.error  # the server answered through the openai client
        assert j.judge_model == Path(tiny_gguf).stem and j.cost_usd is None
