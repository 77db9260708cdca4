"""The started local judge server (runner.judges.serve) against real processes: a quantized judge model,
a server killed mid-judging, a judge model without a chat template."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runner.judges import make_judge
from runner.judges.local_server import EXITED
from runner.store import Store
from test_judge import assert_honest, items, judge_cfg  # tests/ is on sys.path

pytest.importorskip("llama_cpp.server")

KILL_AFTER_REQUESTS = 3


def server_judge(model_path: Path, log_dir: Path, **overrides: Any):
    server = {**judge_cfg("local")["server"], "start": True, "model_path": str(model_path), "n_ctx": 2048,
              "log_dir": str(log_dir), "startup_timeout_s": 60, **overrides.pop("server", {})}
    judge = make_judge(judge_cfg("local", max_completion_tokens=16, timeout_s=30, max_retries=2,
                                 backoff_base_s=0.05, backoff_max_s=0.2, server=server, **overrides))
    judge.check_ready()
    return judge


def server_log(log_dir: Path) -> str:
    (path,) = log_dir.iterdir()
    return path.read_text(errors="replace")


def chat_requests(log_path: Path) -> int:
    """Chat completions the server has answered, from uvicorn's access log lines."""
    return log_path.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1"')


def test_quantized_judge_model_is_served(q4_gguf, tmp_path):
    judge = server_judge(q4_gguf, tmp_path / "logs")
    with judge:
        out = judge.judge_all(items(4, tag="q"), Store(tmp_path / "store"))
        assert judge._server.running, judge._server.log_tail()  # answered and still alive: no segfault
    for j in out:  # the random model's verdicts: valid, or a recorded failure of a real reply
        assert_honest(j)
        assert j.input_tokens > 0 and not (j.error or "").startswith(EXITED), j.error
    text = server_log(tmp_path / "logs")  # kept after exit
    assert "extra_bufts=False" in text
    assert "CPU_REPACK" not in text  # no extra buffer types (the bare llama_cpp.server CLI repacks here)


def test_killed_server_fails_fast_without_retries(q4_gguf, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    judge = server_judge(q4_gguf, tmp_path / "logs", concurrency=1)
    batch = items(60, tag="k")
    with judge:
        server = judge._server
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.update(out=judge.judge_all(batch, Store(tmp_path / "s"))))
        worker.start()
        deadline = time.monotonic() + 30
        while chat_requests(server.log_path) < KILL_AFTER_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert chat_requests(server.log_path) >= KILL_AFTER_REQUESTS, server.log_tail()
        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.join(timeout=30)
        elapsed = time.monotonic() - killed_at
        assert not worker.is_alive()
    out = result["out"]
    answered = chat_requests(server.log_path)  # uvicorn logs a request before its reply is sent
    assert elapsed < 10, elapsed
    assert len(out) == len(batch)
    dead = [j for j in out if (j.error or "").startswith(EXITED)]
    for j in out:
        if (j.error or "").startswith(EXITED):
            assert "SIGKILL" in j.error and str(server.log_path) in j.error and j.scores is None
            assert j.attempts <= (2 if j.input_tokens else 1)  # at most one call to the dead port, never a retry
        else:  # judged before the kill
            assert_honest(j)
            assert j.input_tokens > 0, j.error
    assert dead and len(dead) >= len(batch) - answered  # every item not judged before the kill failed
    assert sum(j.attempts > 0 for j in dead) <= 1  # only the item in flight reached the server: no new requests
    exits = [r for r in caplog.records if EXITED in r.getMessage()]
    assert len(exits) == 1 and exits[0].levelno == logging.ERROR  # one clear line ...
    message = exits[0].getMessage()
    assert "SIGKILL" in message and str(server.log_path) in message and "Last lines of its log" in message
    assert not [r for r in caplog.records if "judgment failed" in r.getMessage() and EXITED in r.getMessage()]


def test_template_less_judge_model_needs_chat_format(templateless_gguf, tmp_path):
    with pytest.raises(ValueError, match=rf"{templateless_gguf.name}.*no chat template.*judge\.server\.chat_format"):
        server_judge(templateless_gguf, tmp_path / "logs")
    judge = server_judge(templateless_gguf, tmp_path / "logs", server={"chat_format": "chatml"})
    with judge:
        [j] = judge.judge_all(items(1, tag="t"), Store(tmp_path / "store"))
    assert_honest(j)
    assert j.input_tokens > 0, j.error
    assert "chat_format=chatml" in server_log(tmp_path / "logs")


def test_server_that_dies_at_startup_says_why(tiny_gguf, tmp_path):
    judge = make_judge(judge_cfg("local", server={**judge_cfg("local")["server"], "start": True,
                                                  "model_path": str(tiny_gguf), "log_dir": str(tmp_path),
                                                  "extra_args": ["--no_such_option", "1"]}))
    judge.check_ready()
    with pytest.raises(RuntimeError, match=rf"(?s)^{EXITED} with code 2 before it was ready \(log: .*no_such_option"):
        judge.__enter__()
