"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, llama_cpp.server, vLLM, Ollama).

Per item: build the rubric messages, call with retries on transient errors (429 honouring Retry-After,
5xx, timeouts, connection errors; exponential backoff with jitter), validate the reply, re-ask once on an
unusable one, and record the outcome. Successful judgments are cached in the store; failures are not, so
the next run retries them. A judge server started here that dies ends judging at once: no retries against
it, and every judgment left is recorded as failed with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from runner.judges import rubric
from runner.judges import pairwise
from runner.judges.base import JUDGE_MODES, REFERENCE_MODES, JudgeItem
from runner.judges.local_server import EXITED, LocalServer, ServerExited, ServerSettings, gguf_has_chat_template
from runner.records import Judgment, from_dict, to_dict
from runner.store import Store, hash_payload

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 120.0
_REASONING_MODEL = re.compile(r"^(gpt-5|o\d)")
_KEYLIKE = re.compile(r"sk-[A-Za-z0-9_\-*]{8,}")


@dataclass
class JudgeSettings:
    """conf/judge/{openai,local}.yaml. Unknown keys are rejected so typos fail loudly."""

    name: str
    model: str | None
    rubric_version: str
    reference: str = "none"  # the reference answer the judge sees: baseline | prompt | none
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    response_format: str = "json_schema"
    temperature: float | None = None
    reasoning_effort: str | None = None
    max_completion_tokens: int = 1024
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    price_per_1m_input: float | None = None
    price_per_1m_output: float | None = None
    repeats: int = 1
    where: str = "auto"  # cell | end | auto: where a sweep judges (runner/stages/judge.py: judge_where)
    mode: str = "absolute"  # absolute: the 0-10 rubric per answer; pairwise: each build vs the baseline's answer
    server: ServerSettings = field(default_factory=ServerSettings)


def settings_from_cfg(cfg: dict[str, Any]) -> JudgeSettings:
    """Typed settings from a resolved judge config; one clear error per bad key."""
    where = f"conf/judge/{cfg.get('name')}.yaml"
    names = {f.name for f in dataclasses.fields(JudgeSettings)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    server = dict(cfg.get("server") or {})
    server_names = {f.name for f in dataclasses.fields(ServerSettings)}
    if bad := sorted(set(server) - server_names):
        raise ValueError(f"{where}: unknown keys {['server.' + k for k in bad]}; known: {sorted(server_names)}")
    try:
        s = JudgeSettings(**{**cfg, "server": ServerSettings(**server)})
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    if s.response_format not in rubric.RESPONSE_FORMATS:
        raise ValueError(f"{where}: response_format {s.response_format!r} is not one of "
                         f"{list(rubric.RESPONSE_FORMATS)}")
    if s.reference not in REFERENCE_MODES:
        raise ValueError(f"{where}: reference {s.reference!r} is not one of {list(REFERENCE_MODES)}")
    if s.mode not in JUDGE_MODES:
        raise ValueError(f"{where}: mode {s.mode!r} is not one of {list(JUDGE_MODES)}")
    if s.mode == "absolute" and s.rubric_version != rubric.RUBRIC_VERSION:
        raise ValueError(f"{where}: rubric_version {s.rubric_version!r} is unknown; this runner has "
                         f"{rubric.RUBRIC_VERSION!r}")
    for key in ("concurrency", "max_completion_tokens", "repeats"):
        if getattr(s, key) < 1:
            raise ValueError(f"{where}: {key} must be >= 1, got {getattr(s, key)}")
    if s.max_retries < 0:
        raise ValueError(f"{where}: max_retries must be >= 0, got {s.max_retries}")
    return s


def is_reasoning_model(model: str) -> bool:
    """gpt-5 and o-series: max_completion_tokens, no custom temperature, optional reasoning_effort."""
    return bool(_REASONING_MODEL.match(model))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after_s(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


@dataclass
class _Tally:
    """What one judgment spent, across retries and the re-ask."""

    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class OpenAIJudge:
    """`Judge` for `name: openai` and `name: local`."""

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.name = settings.name
        self.mode = settings.mode
        self.rubric: Any = pairwise if settings.mode == "pairwise" else rubric  # messages, schema, parsing
        self.model = settings.model or self._default_model()
        self.repeats = settings.repeats
        self._server: LocalServer | None = None
        self._client: openai.OpenAI | None = None
        self._backoff = wait_exponential_jitter(multiplier=settings.backoff_base_s, max=settings.backoff_max_s,
                                                jitter=settings.backoff_base_s)

    def __repr__(self) -> str:
        return f"OpenAIJudge(name={self.name!r}, model={self.model!r}, base_url={self.settings.base_url!r})"

    def _default_model(self) -> str:
        path = self.settings.server.model_path
        return Path(path).stem if self.settings.server.start and path else ""

    # ------------------------------------------------------------------ readiness and lifecycle

    def check_ready(self) -> None:
        s = self.settings
        if not s.api_key:
            if s.name == "openai":
                raise ValueError("judge=openai needs OPENAI_API_KEY in the environment "
                                 "(conf/judge/openai.yaml: api_key)")
            raise ValueError(f"judge={s.name} needs an api_key (conf/judge/{s.name}.yaml: api_key; any "
                             f"non-empty value for servers without auth, e.g. LOCAL_JUDGE_API_KEY=sk-local)")
        if not self.model:
            raise ValueError(f"judge={s.name} needs a model name (conf/judge/{s.name}.yaml: model)")
        if s.server.start:
            if not s.server.model_path:
                raise ValueError(f"judge={s.name}: server.start is true but server.model_path is null "
                                 f"(conf/judge/{s.name}.yaml: server.model_path)")
            if not Path(s.server.model_path).is_file():
                raise ValueError(f"judge={s.name}: server.model_path {s.server.model_path!r} is not a file")
            for key in ("n_threads", "n_threads_batch", "n_gpu_layers"):
                value = getattr(s.server, key)
                if value not in (None, "auto") and type(value) is not int:
                    raise ValueError(f"judge={s.name}: server.{key} must be an integer or auto, got {value!r}")
            if not s.server.chat_format and not gguf_has_chat_template(s.server.model_path):
                raise ValueError(f"judge={s.name}: the judge model {s.server.model_path} has no chat template "
                                 f"(GGUF metadata tokenizer.chat_template), so the server cannot build chat "
                                 f"prompts; set judge.server.chat_format (e.g. chatml) to the format it was "
                                 f"trained with")
            try:
                import llama_cpp.server  # noqa: F401
            except ImportError as e:
                raise ValueError(f"judge={s.name} with server.start needs llama-cpp-python[server] ({e})") from None
        elif s.name == "local" and not s.base_url:
            raise ValueError("judge=local needs base_url (an OpenAI-compatible server, e.g. "
                             "http://127.0.0.1:8000/v1) or server.start: true (conf/judge/local.yaml)")
        if is_reasoning_model(self.model) and s.temperature is not None:
            raise ValueError(f"judge={s.name}: model {self.model!r} accepts no custom temperature; "
                             f"set temperature: null (conf/judge/{s.name}.yaml)")

    def __enter__(self) -> OpenAIJudge:
        if self.settings.server.start:
            self._server = LocalServer(self.settings.server, self.model).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.__exit__()
            self._server = None

    @property
    def base_url(self) -> str | None:
        return self._server.base_url if self._server is not None else self.settings.base_url

    def client(self) -> openai.OpenAI:
        if self.settings.server.start and self._server is None:
            raise RuntimeError("judge with server.start must be used as a context manager: `with judge: ...`")
        if self._client is None:
            # max_retries=0: tenacity retries, so every HTTP attempt is counted in the record.
            self._client = openai.OpenAI(api_key=self.settings.api_key, base_url=self.base_url,
                                         timeout=self.settings.timeout_s, max_retries=0)
        return self._client

    # ------------------------------------------------------------------ cache key and request

    def judge_identity(self, store: Store) -> dict[str, Any]:
        """Which judge answers: its name and model, the endpoint, and for a server started here the weights'
        content digest and the server settings that can change a reply (a port or path is no identity)."""
        s = self.settings
        if not s.server.start:
            return {"name": s.name, "model": self.model, "base_url": s.base_url}
        server = s.server
        return {"name": s.name, "model": self.model, "weights_sha256": store.file_digest(Path(server.model_path)),
                "server": {"n_ctx": server.n_ctx, "chat_format": server.chat_format,
                           "extra_args": [str(a) for a in server.extra_args]}}

    def cache_payload(self, item: JudgeItem, messages: list[dict[str, str]], identity: dict[str, Any]) -> dict[str, Any]:
        """Everything that determines the verdict; never paths, timestamps or the key."""
        s = self.settings
        payload: dict[str, Any] = {
            "generation_key": item.generation_key,
            "judge": identity,
            "mode": s.mode,
            "rubric_version": self.rubric.RUBRIC_VERSION,
            "rubric_sha": self.rubric.RUBRIC_SHA,
            "reference_sha": rubric.text_sha(item.reference),
            "messages_sha": rubric.text_sha(json.dumps(messages)),
            "params": {"response_format": self._response_format(), "temperature": s.temperature,
                       "reasoning_effort": s.reasoning_effort, "max_completion_tokens": s.max_completion_tokens},
        }
        if item.repeat:  # repeat 0 keeps the key of a single verdict
            payload["judge_repeat"] = item.repeat
        return payload

    def _response_format(self) -> dict[str, Any] | None:
        return rubric.response_format(self.settings.response_format, self.rubric.reply_schema())

    def request_params(self) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"model": self.model}
        if is_reasoning_model(self.model):
            params["max_completion_tokens"] = s.max_completion_tokens
            if s.reasoning_effort is not None:
                params["reasoning_effort"] = s.reasoning_effort
        else:
            params["max_tokens"] = s.max_completion_tokens
            if s.temperature is not None:
                params["temperature"] = s.temperature
        if (fmt := self._response_format()) is not None:
            params["response_format"] = fmt
        return params

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = _retry_after_s(exc)
        return retry_after if retry_after is not None else self._backoff(state)

    def _check_server(self, wait_s: float = 0.0) -> None:
        """Raise ServerExited when the server started here is gone (a server elsewhere is not watched)."""
        if self._server is not None:
            self._server.check_alive(wait_s)

    def _complete(self, messages: list[dict[str, str]], tally: _Tally) -> Any:
        """One chat completion, retried on transient errors; every HTTP attempt is tallied.

        ServerExited (not transient) ends the retries when the server started here is gone.
        """
        client, params = self.client(), self.request_params()

        def attempt() -> Any:
            self._check_server()
            tally.attempts += 1
            try:
                completion = client.chat.completions.create(messages=messages, **params)
            except openai.APIConnectionError as e:
                # A killed server drops its connections a moment before its process can be reaped.
                self._check_server(wait_s=0.0 if isinstance(e, openai.APITimeoutError) else 1.0)
                raise
            if completion.usage is not None:
                tally.input_tokens += completion.usage.prompt_tokens or 0
                tally.output_tokens += completion.usage.completion_tokens or 0
            return completion

        retrying = Retrying(stop=stop_after_attempt(self.settings.max_retries + 1), wait=self._wait,
                            retry=retry_if_exception(_is_transient), reraise=True,
                            before_sleep=lambda st: log.debug("judge call failed (%s), retrying",
                                                              self._redact(repr(st.outcome.exception()))))
        return retrying(attempt)

    # ------------------------------------------------------------------ judging

    def _redact(self, text: str) -> str:
        if self.settings.api_key:
            text = text.replace(self.settings.api_key, "***")
        return _KEYLIKE.sub("sk-***", text)

    def _cost(self, tally: _Tally) -> float | None:
        s = self.settings
        if s.price_per_1m_input is None or s.price_per_1m_output is None:
            return None  # unknown, never 0
        return (tally.input_tokens * s.price_per_1m_input + tally.output_tokens * s.price_per_1m_output) / 1e6

    def _record(self, tally: _Tally, key: str, verdict: rubric.Verdict | None = None,
                error: str | None = None) -> Judgment:
        return Judgment(
            judge_model=self.model, rubric_version=self.rubric.RUBRIC_VERSION, winner=verdict.winner if verdict else None,
            scores=verdict.scores if verdict else None, reasoning=verdict.reasoning if verdict else None,
            error=self._redact(error) if error else None, attempts=tally.attempts,
            input_tokens=tally.input_tokens, output_tokens=tally.output_tokens, cost_usd=self._cost(tally), key=key,
        )

    def judge_one(self, messages: list[dict[str, str]], key: str) -> Judgment:
        """Judge one item's messages: call, validate, re-ask once on an unusable reply, else record the failure."""
        tally = _Tally()
        problem = ""
        for _ in range(2):
            try:
                completion = self._complete(messages, tally)
            except ServerExited as e:
                return self._record(tally, key, error=e.reason)
            except Exception as e:  # transport or API error after retries: a failure record, not a raise
                return self._record(tally, key, error=f"{type(e).__name__}: {e}")
            if not completion.choices:
                content, problem = None, "the response has no choices"
            else:
                choice = completion.choices[0]
                content = choice.message.content
                if choice.finish_reason == "length":
                    problem = "the reply was cut at the token limit (finish_reason=length); be brief"
                elif content is None and getattr(choice.message, "refusal", None):
                    problem = f"refused: {choice.message.refusal}"
                else:
                    try:
                        return self._record(tally, key, verdict=self.rubric.parse_reply(content))
                    except rubric.InvalidReply as e:
                        problem = str(e)
            messages = messages + self.rubric.correction_messages(content, problem)
        return self._record(tally, key, error=f"invalid reply after one re-ask: {problem}")

    def judge_all(self, items: list[JudgeItem], store: Store) -> list[Judgment]:
        """Cached judgments for known items; the rest judged concurrently. Same order as `items`."""
        results: list[Judgment | None] = [None] * len(items)
        # cache key → (messages, payload, indexes of the items that share it)
        todo: dict[str, tuple[list[dict[str, str]], dict[str, Any], list[int]]] = {}
        identity = self.judge_identity(store)
        for i, item in enumerate(items):
            if self.mode == "pairwise" and item.answer == item.pair_answer:
                results[i] = Judgment(judge_model=self.model, rubric_version=self.rubric.RUBRIC_VERSION, scores={},
                                      winner="tie", reasoning=pairwise.IDENTICAL)
                continue
            messages = self.rubric.build_messages(item)
            payload = self.cache_payload(item, messages, identity)
            key = hash_payload(payload)
            if key in todo:  # an identical item in this batch: judge it once
                todo[key][2].append(i)
            elif (entry := store.lookup("judgment", payload)) is not None:
                results[i] = dataclasses.replace(from_dict(Judgment, entry.manifest["record"]), cache_hit=True)
            else:
                todo[key] = (messages, payload, [i])
        if todo:
            cached = sum(r is not None for r in results)
            log.info("judging %d items with %s (%d of %d from cache)", len(todo), self.model, cached, len(items))
            self.client()  # create it once, before the worker threads share it
            with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(todo))) as pool:
                futures = {pool.submit(self.judge_one, messages, key): key for key, (messages, _, _) in todo.items()}
                for future in as_completed(futures):  # cache each as it lands: an interrupted batch keeps its work
                    judgment = future.result()
                    _, payload, indexes = todo[futures[future]]
                    if judgment.scores is not None:  # failures stay uncached so the next run retries them
                        store.put_json("judgment", payload, to_dict(judgment))
                    elif not (judgment.error or "").startswith(EXITED):  # that one was logged once, by the server
                        log.warning("judgment failed after %d attempts: %s", judgment.attempts, judgment.error)
                    for i in indexes:
                        results[i] = dataclasses.replace(judgment)
        assert all(r is not None for r in results)
        if self.mode == "pairwise":  # the verdict names a position (A, B); the record names who won
            for j, item in zip(results, items):
                if j.winner in ("A", "B"):
                    j.winner = pairwise.for_build(j.winner, item.order)
                j.order = item.order
        return results  # type: ignore[return-value]
