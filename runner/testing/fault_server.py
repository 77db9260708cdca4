"""A fault-injecting OpenAI-compatible chat-completions server for judge tests and benchmarks.

    python -m runner.testing.fault_server --port 0 --fault-rate 0.3 --seed 0 --latency-s 0.0 \\
        --faults 429,500,hang,malformed,out_of_range,length --hang-s 30 --retry-after 1

Each request gets, with probability `fault_rate`, one of the faults, otherwise a valid judgment JSON in
`choices[0].message.content` with usage tokens. The outcome is a function of (seed, request body, how
often that body was seen), so it is deterministic per seed whatever the arrival order. Valid scores are
1..10, never 0, so a 0 in a judge record can only be a fill. `GET /stats` counts requests and outcomes;
`POST /reset` zeroes them. Prints "ready on port P" once listening.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "malformed", "out_of_range", "length")
CRITERIA = ("overall", "accuracy", "coherence", "relevance")


@dataclass
class FaultPlan:
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    seed: int = 0
    latency_s: float = 0.0
    hang_s: float = 30.0
    retry_after: str = "1"

    def outcome(self, body: bytes, nth: int) -> tuple[str, random.Random]:
        rng = random.Random(f"{self.seed}:{hashlib.sha256(body).hexdigest()}:{nth}")
        return (rng.choice(self.faults) if rng.random() < self.fault_rate else "ok"), rng


@dataclass
class State:
    plan: FaultPlan
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0  # the most chat requests served at the same time
    first_at: float | None = None  # epoch seconds of the first and last chat request
    last_at: float | None = None

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.first_at = self.first_at or time.time()
            self.last_at = time.time()

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def next_outcome(self, body: bytes) -> tuple[str, random.Random]:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            nth = self.seen[digest]
            self.seen[digest] += 1
            outcome, rng = self.plan.outcome(body, nth)
            self.requests += 1
            self.by_outcome[outcome] += 1
        return outcome, rng

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "by_outcome": dict(self.by_outcome),
                    "max_in_flight": self.max_in_flight, "first_at": self.first_at, "last_at": self.last_at}

    def reset(self) -> None:
        with self.lock:
            self.requests = self.max_in_flight = 0
            self.first_at = self.last_at = None
            self.by_outcome.clear()
            self.seen.clear()


def _verdict(rng: random.Random, pairwise: bool, low: int = 1, high: int = 10) -> dict[str, Any]:
    """A valid verdict: scores 1..10 for the absolute rubric, or a winner for a pairwise request."""
    if pairwise:
        return {"reasoning": "Canned pairwise verdict from the fault server.", "winner": rng.choice(["A", "B", "tie"])}
    return {"reasoning": "Canned verdict from the fault server.", **{c: rng.randint(low, high) for c in CRITERIA}}


def _completion(model: str, content: str, finish_reason: str, prompt_chars: int) -> dict[str, Any]:
    completion_tokens = max(1, len(content) // 4)
    prompt_tokens = max(1, prompt_chars // 4)
    return {
        "id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs
    disable_nagle_algorithm = True  # else headers + body writes meet delayed ACKs: +40 ms a request
    server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet; never log headers
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. after a hang)
            pass

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._send(200, self.server.state.stats())
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fault-judge", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/reset":
            self.server.state.reset()
            self._send(200, {"ok": True})
        elif self.path == "/v1/chat/completions":
            self.server.state.enter()
            try:
                self._chat(body)
            finally:
                self.server.state.leave()
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _chat(self, body: bytes) -> None:
        state = self.server.state
        plan = state.plan
        outcome, rng = state.next_outcome(body)
        try:
            model = json.loads(body).get("model", "fault-judge")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        time.sleep(plan.latency_s)
        pairwise = b"<answer_a>" in body
        verdict = json.dumps(_verdict(rng, pairwise))
        if outcome == "429":
            self._send(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                       {"Retry-After": plan.retry_after})
        elif outcome == "500":
            self._send(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        elif outcome == "hang":
            time.sleep(plan.hang_s)
            self._send(200, _completion(model, verdict, "stop", len(body)))
        elif outcome == "malformed":
            self._send(200, _completion(model, verdict[: len(verdict) // 2], "stop", len(body)))
        elif outcome == "out_of_range":
            bad = ({**_verdict(rng, True), "winner": "C"} if pairwise
                   else {**_verdict(rng, False), rng.choice(CRITERIA): rng.choice([-1, 11, 42])})
            self._send(200, _completion(model, json.dumps(bad), "stop", len(body)))
        elif outcome == "length":
            self._send(200, _completion(model, verdict[: len(verdict) // 3], "length", len(body)))
        else:
            self._send(200, _completion(model, verdict, "stop", len(body)))


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections under concurrent load

    def __init__(self, port: int, plan: FaultPlan, host: str = "127.0.0.1"):
        super().__init__((host, port), Handler)
        self.state = State(plan)

    @property
    def port(self) -> int:
        return self.server_address[1]


class FaultServerProcess:
    """Run the server as a subprocess (its own GIL): `with FaultServerProcess(fault_rate=0.3) as url: ...`."""

    def __init__(self, **plan: Any):
        self.args = [f"--{k.replace('_', '-')}={','.join(v) if isinstance(v, (list, tuple)) else v}"
                     for k, v in plan.items()]
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultServerProcess:
        self._proc = subprocess.Popen([sys.executable, "-m", "runner.testing.fault_server", "--port", "0", *self.args],
                                      stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not (m := re.search(r"ready on port (\d+)", line)):
            self.__exit__()
            raise RuntimeError(f"fault server did not start: {line!r}")
        self.port = int(m.group(1))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def reset(self) -> None:
        self._call("POST", "/reset")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-s", type=float, default=0.0, help="added to every request")
    p.add_argument("--hang-s", type=float, default=30.0, help="how long a 'hang' fault sleeps")
    p.add_argument("--retry-after", default="1", help="Retry-After header value (seconds) on 429")
    a = p.parse_args(argv)
    faults = tuple(f for f in a.faults.split(",") if f)
    if unknown := set(faults) - set(FAULTS):
        p.error(f"unknown faults {sorted(unknown)}; options: {','.join(FAULTS)}")
    plan = FaultPlan(a.fault_rate, faults, a.seed, a.latency_s, a.hang_s, a.retry_after)
    server = FaultServer(a.port, plan, a.host)
    print(f"ready on port {server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
