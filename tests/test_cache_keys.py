"""Cache keys are complete and versioned: change any input a result depends on, and the cache misses."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from runner.stages import fidelity as fidelity_stage
from runner.stages import generate as generation
from runner.contract import RenderedPrompt
from runner.judges import rubric
from runner.judges import make_judge
from runner.records import ArtifactInfo, RuntimeInfo, SamplerParams
from runner.store import Store, hash_payload
from runner.testing.fault_server import FaultServerProcess
from test_judge import CLEAN, items, judge_cfg  # tests/ is on sys.path

ARTIFACT = ArtifactInfo(key="art-1", path="/x", size_bytes=1, bits_per_weight=4.5, build_s=0.0, cache_hit=False)
ENGINE = {"name": "llama.cpp", "llama-cpp-python": "0.3.36", "llama.cpp": "0c1e570"}
RUNTIME = RuntimeInfo(device="cpu", compute_dtype="float32", settings={"n_threads": 1, "n_gpu_layers": 0},
                      engine=ENGINE)
PROMPT = RenderedPrompt("<user>hi", [1, 2, 3])
SAMPLER = SamplerParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, repetition_penalty=1.0, max_tokens=64, seed=0)


def gen_key(**change) -> str:
    args = {"artifact": ARTIFACT, "runtime": RUNTIME, "rendered": PROMPT, "sampler": SAMPLER, "stop_ids": [4]}
    return hash_payload(generation.generation_key(**{**args, **change}))


GENERATION_CHANGES = {
    "artifact": {"artifact": dataclasses.replace(ARTIFACT, key="art-2")},
    "device": {"runtime": dataclasses.replace(RUNTIME, device="metal")},
    "compute_dtype": {"runtime": dataclasses.replace(RUNTIME, compute_dtype="float16")},
    "engine settings": {"runtime": dataclasses.replace(RUNTIME, settings={"n_threads": 1, "n_gpu_layers": -1})},
    "engine package version": {"runtime": dataclasses.replace(RUNTIME, engine={**ENGINE, "llama-cpp-python": "0.3.37"})},
    "engine library build": {"runtime": dataclasses.replace(RUNTIME, engine={**ENGINE, "llama.cpp": "1d2f3a4"})},
    "engine": {"runtime": dataclasses.replace(RUNTIME, engine={"name": "mlx", "mlx": "0.32.4", "mlx-lm": "0.32.2"})},
    "prompt token ids": {"rendered": RenderedPrompt("<user>hi", [1, 2, 5])},
    "stop ids": {"stop_ids": [4, 7]},
    **{f"sampler.{f.name}": {"sampler": dataclasses.replace(SAMPLER, **{f.name: getattr(SAMPLER, f.name) + 1})}
       for f in dataclasses.fields(SamplerParams)},
}


@pytest.mark.parametrize("change", GENERATION_CHANGES, ids=list(GENERATION_CHANGES))
def test_generation_key_covers_every_input(change):
    assert gen_key(**GENERATION_CHANGES[change]) != gen_key()


def test_thread_counts_stay_out_of_the_token_keys_and_in_the_speed_tag():
    """Greedy ids and log-probs were bit-identical across 1-8 llama.cpp threads (ARCHITECTURE.md): a store moved
    to a host with another core count keeps its answers; their speed is tagged with the threads."""
    from runner.host import measured_on
    from runner.records import HostInfo

    threads = dataclasses.replace(RUNTIME, settings={"n_threads": 4, "n_threads_batch": 8, "n_gpu_layers": 0})
    assert gen_key(runtime=threads) == gen_key()
    stage, other = SimpleNamespace(artifact=ARTIFACT, runtime=RUNTIME), SimpleNamespace(artifact=ARTIFACT, runtime=threads)
    assert fidelity_stage.baseline_key(stage, [[1, 2]], "sha", 256) == fidelity_stage.baseline_key(other, [[1, 2]], "sha", 256)
    host = HostInfo(fingerprint="f" * 16, cpu="cpu", cores=8, gpu=None, platform="Linux-x86_64")
    assert measured_on(host, RUNTIME) != measured_on(host, threads)
    assert "n_threads=4" in measured_on(host, threads)


def test_generation_and_fidelity_keys_carry_a_code_version(monkeypatch):
    before = gen_key()
    stage = SimpleNamespace(artifact=ARTIFACT, runtime=RUNTIME)
    ref_before = hash_payload(fidelity_stage.baseline_key(stage, [[1, 2], [3, 4]], "sha", 256))
    monkeypatch.setattr(generation, "GENERATION_CODE_VERSION", generation.GENERATION_CODE_VERSION + 1)
    monkeypatch.setattr(fidelity_stage, "FIDELITY_CODE_VERSION", fidelity_stage.FIDELITY_CODE_VERSION + 1)
    assert gen_key() != before
    assert hash_payload(fidelity_stage.baseline_key(stage, [[1, 2], [3, 4]], "sha", 256)) != ref_before


def test_fidelity_keys_cover_every_input():
    stage = SimpleNamespace(artifact=ARTIFACT, runtime=RUNTIME)
    other_art = SimpleNamespace(artifact=dataclasses.replace(ARTIFACT, key="art-2"), runtime=RUNTIME)
    other_rt = SimpleNamespace(artifact=ARTIFACT, runtime=dataclasses.replace(RUNTIME, device="cuda"))
    chunks = [[1, 2, 3], [4, 5, 6]]

    def ref(s=stage, c=chunks, sha="sha", k=256) -> str:
        return hash_payload(fidelity_stage.baseline_key(s, c, sha, k))

    assert len({ref(), ref(s=other_art), ref(s=other_rt), ref(c=[[1, 2], [3, 4], [5, 6]]), ref(c=chunks[:1]),
                ref(sha="sha2"), ref(k=None), ref(k=64)}) == 8
    entry = SimpleNamespace(key="ref-1")

    def score(e=entry, s=stage, name="gguf_fp16") -> str:
        return hash_payload(fidelity_stage.score_key(e, s, name))

    assert len({score(), score(e=SimpleNamespace(key="ref-2")), score(s=other_art), score(s=other_rt),
                score(name="mlx_fp16")}) == 5


@pytest.fixture(scope="module")
def server():
    with FaultServerProcess(fault_rate=0.0) as s:
        yield s


def requests_for(server, store: Store, batch, **cfg) -> int:
    """HTTP requests one judge_all makes: 0 when every verdict comes from the cache."""
    before = server.stats()["requests"]
    judge = make_judge({**judge_cfg("openai"), "api_key": "sk-x", "base_url": server.base_url, **CLEAN, **cfg})
    with judge:
        assert all(j.scores for j in judge.judge_all(batch, store))
    return server.stats()["requests"] - before


def test_judgment_cache_misses_when_any_judge_input_changes(server, tmp_path, monkeypatch):
    store, batch = Store(tmp_path), items(3, tag="keys")
    assert requests_for(server, store, batch) == 3
    assert requests_for(server, store, batch) == 0  # same judge, same answers: all cached
    localhost = server.base_url.replace("127.0.0.1", "localhost")  # the same server under another URL
    for change in ({"model": "gpt-4o"}, {"base_url": localhost}, {"response_format": "json_object"},
                   {"name": "local", "model": "gpt-5-nano"}, {"max_completion_tokens": 512}):
        assert requests_for(server, store, batch, **change) == 3, change
    with_reference = [dataclasses.replace(i, reference="the answer") for i in batch]
    assert requests_for(server, store, with_reference) == 3
    monkeypatch.setattr(rubric, "RUBRIC_SHA", "edited-rubric")
    assert requests_for(server, store, batch) == 3


def test_local_judge_key_uses_the_weights_content_and_server_settings(tmp_path):
    store = Store(tmp_path / "store")
    a, b = tmp_path / "a" / "judge.gguf", tmp_path / "b" / "judge.gguf"
    for path, byte in ((a, b"\x01"), (b, b"\x02")):
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + byte * 64)  # same name, same size, other weights

    def identity(path, **server) -> str:
        cfg = judge_cfg("local", server={**judge_cfg("local")["server"], "start": True, "model_path": str(path),
                                         **server})
        return hash_payload(make_judge(cfg).judge_identity(store))

    assert identity(a) == identity(a, port=12345, log_dir="/elsewhere", n_threads=1)  # no identity in these
    assert len({identity(a), identity(b), identity(a, extra_args=["--n_batch", "64"]), identity(a, n_ctx=8192),
                identity(a, chat_format="chatml")}) == 5
