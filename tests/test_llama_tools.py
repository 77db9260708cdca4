"""llama.cpp's own tools built from the installed bindings' sdist (runner/backends/llama_tools.py).

The first run on a machine builds them into the machine-wide cache (`~/.cache/runner/llama-tools`, or
$RUNNER_LLAMA_TOOLS_CACHE): several minutes on 2 cores; `.ci/run` pre-builds them. Every later run finds them
there. Without cmake or a compiler these tests skip with the reason; REQUIRE_LLAMA_TOOLS=1 makes that a failure.
The error tests run in subprocesses with their own empty cache, so they never build.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from runner.backends import llama_tools as lt
from runner.store import Store

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "runner" / "data" / "fidelity_eval.txt"
pytestmark = pytest.mark.timeout(3600)  # the first run on a machine builds the tools


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Store, lt.LlamaTools, float]:
    store = Store(tmp_path_factory.mktemp("tools-store"))
    t0 = time.perf_counter()
    try:
        tools = lt.tools(store)
    except lt.MissingBuildTool as e:
        if os.environ.get("REQUIRE_LLAMA_TOOLS") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))
    return store, tools, time.perf_counter() - t0


def run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


def test_the_four_tools_are_built_or_cached_and_run(built):
    _, tools, _ = built
    for name, path in tools.paths.items():
        assert path.is_file() and os.access(path, os.X_OK), name
        assert path.name == name
    # llama-quantize answers --help with its usage and exit status 1 (quantize.cpp: usage() → exit(1));
    # it has no --version. The other three take llama.cpp's common --version (exit 0).
    proc = run([tools.quantize, "--help"])
    assert proc.returncode == 1 and "usage:" in proc.stdout
    for path in (tools.imatrix, tools.perplexity, tools.bench):
        proc = run([path, "--version"])
        assert proc.returncode == 0 and "version:" in proc.stderr, (path, proc.stderr)


def test_a_second_request_builds_nothing(built, tmp_path):
    store, first, _ = built
    n_builds = len(lt.builds())
    t0 = time.perf_counter()
    again = lt.tools(store)
    elapsed = time.perf_counter() - t0
    assert again.cache_hit and again.key == first.key and again.paths == first.paths
    assert len(lt.builds()) == n_builds, "a cached build was built again"
    assert elapsed < 10, f"a cache hit took {elapsed:.1f} s"
    assert len(store.builds(lt.STORE_KIND)) == 1  # registered once in this store
    other = Store(tmp_path / "other")  # a fresh store (as every test's) registers, never builds
    assert lt.tools(other).cache_hit and len(lt.builds()) == n_builds
    assert len(other.builds(lt.STORE_KIND)) == 1
    where = run([sys.executable, "-m", "runner.backends.llama_tools", "where"], cwd=REPO)
    assert where.returncode == 0 and str(first.quantize) in where.stdout


def test_build_info_names_the_version_and_the_bindings_llama_cpp(built):
    import llama_cpp.llama_cpp as lib

    from runner.backends.gguf import engine

    _, tools, _ = built
    info = tools.build_info
    assert info["llama-cpp-python"] == version("llama-cpp-python")
    loaded = engine()["llama.cpp"]  # ggml_commit() of the loaded library: short commit, "-dirty" (see module doc)
    assert info["bindings_ggml_commit"] == loaded
    short = loaded.split("-")[0]
    # the vendored tree's commit is the full hash; the library reports git's short form of the same commit
    assert re.fullmatch(r"[0-9a-f]{40}", info["llama.cpp"]) and info["llama.cpp"].startswith(short)
    fn = lib._lib.llama_version
    fn.restype = ctypes.c_char_p
    assert info["tools_version"].startswith(f"version: {fn().decode()} (")
    assert f"commit {short})" in info["tools_version"]
    # the tools' ggml says of itself exactly what the bindings' ggml says (same configure of the same tree)
    assert f"{loaded}\0".encode() in tools.perplexity.read_bytes()
    assert set(info["binaries"]) == set(lt.TOOLS) and info["cmake_flags"][:2] == list(lt.BASE_FLAGS[:2])
    assert info["compiler"]["cxx"] and info["build_s"] > 0 and info["sdist_sha256"]
    record = tools.record()
    assert record["key"] == tools.key and record["llama.cpp"] == info["llama.cpp"]


def test_the_store_records_the_build_and_verify_checks_the_binaries(built):
    store, tools, _ = built
    entry = store.lookup(lt.STORE_KIND, {"build": tools.key, "binaries": {
        n: r["sha256"] for n, r in sorted(tools.build_info["binaries"].items())}})
    assert entry is not None and entry.key == tools.store_entry
    external = {Path(r["path"]).name: r for r in entry.manifest["external"]}
    assert set(external) == set(lt.TOOLS)
    assert all(external[n]["sha256"] == tools.build_info["binaries"][n]["sha256"] for n in lt.TOOLS)
    proc = run([sys.executable, "-m", "runner.store", "--store", store.root, "verify", "--kind", lt.STORE_KIND],
               cwd=REPO)
    assert proc.returncode == 0 and "0 corrupt" in proc.stdout, proc.stdout + proc.stderr


def test_llama_quantize_writes_the_bytes_the_bindings_write(built, tiny_gguf, tmp_path):
    """Same ggml: F16 → Q4_0 through the tool and through `llama_model_quantize` of the bindings."""
    import llama_cpp

    _, tools, _ = built
    nthread = 2
    by_tool = tmp_path / "tool-q4_0.gguf"
    proc = run([tools.quantize, tiny_gguf, by_tool, "Q4_0", nthread])
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_bindings = tmp_path / "bindings-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = nthread
    assert llama_cpp.llama_model_quantize(str(tiny_gguf).encode(), str(by_bindings).encode(), ctypes.byref(params)) == 0
    assert by_tool.read_bytes() == by_bindings.read_bytes()


PPL_ARGS = ["-c", 128, "-b", 128, "-ub", 128, "--chunks", 4, "-fa", "off", "-t", 2, "--no-warmup"]


def test_llama_perplexity_computes_what_the_bindings_compute(built, tiny_gguf):
    """Same ggml in a forward pass: the tool's running perplexity per chunk equals the one computed from the
    bindings' logits on the same tokens, chunks and batch, with the tool's arithmetic (perplexity.cpp: expf in
    float, sums in double). Printed to 4 decimals, the values are ~2e4 here: they agree to ~1e-8 relative, where
    logits differing by 1e-6 would move them by ~1e-6. Plus the CPU features both were compiled with."""
    import llama_cpp
    from llama_cpp import Llama

    _, tools, _ = built
    proc = run([tools.perplexity, "-m", tiny_gguf, "-f", TEXT, *PPL_ARGS])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stderr + proc.stdout
    tool = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", out)]
    assert len(tool) == 4 and f"Final estimate: PPL = {tool[-1]:.4f}" in out
    features = re.search(r"system_info: .*? \| (CPU : .*)", out).group(1).strip()
    assert features == llama_cpp.llama_print_system_info().decode().strip()

    n_ctx = 128
    llm = Llama(model_path=str(tiny_gguf), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=2, n_threads_batch=2, flash_attn=False, verbose=False)
    try:
        tokens = llm.tokenize(TEXT.read_bytes(), add_bos=True, special=False)  # as common_tokenize(ctx, text, true)
        first, nll, count, ours = n_ctx // 2, 0.0, 0, []
        for i in range(4):
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
            llm.reset()
            llm.eval(chunk)
            logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float32)
            for j, row in enumerate(logits):
                top = row.max()
                sum_exp = np.exp(row - top, dtype=np.float32).astype(np.float64).sum()
                nll -= float(np.float32(row[chunk[first + 1 + j]] - top)) - np.log(sum_exp)
                count += 1
            ours.append(float(np.exp(nll / count)))
    finally:
        llm.close()
    # the last printed digit may differ by one or two: the tool sums per thread, in whatever order they finish
    assert all(abs(a - b) <= 2.5e-4 for a, b in zip(tool, ours)), (tool, ours)


def test_llama_perplexity_prints_its_last_lines_every_time(built, tiny_gguf):
    """The log patch (llama_tools.PATCHES): unpatched, "Final estimate" was missing in 9 of 30 piped runs."""
    _, tools, _ = built
    assert "common-log-drain-at-exit" in tools.build_info["patches"]
    for _ in range(8):
        proc = run([tools.perplexity, "-m", tiny_gguf, "-f", TEXT, *PPL_ARGS])
        assert proc.returncode == 0 and "Final estimate: PPL" in proc.stderr + proc.stdout


def test_imatrix_and_bench_run_on_the_tiny_model(built, tiny_gguf, tmp_path):
    _, tools, _ = built
    imatrix = tmp_path / "imatrix.gguf"
    proc = run([tools.imatrix, "-m", tiny_gguf, "-f", TEXT, "-o", imatrix, "-c", 64, "--chunks", 2, "-t", 2])
    assert proc.returncode == 0 and imatrix.is_file(), proc.stderr[-2000:]
    q = tmp_path / "q4_k_m.gguf"
    proc = run([tools.quantize, "--imatrix", imatrix, tiny_gguf, q, "Q4_K_M", 2])
    assert proc.returncode == 0 and q.is_file(), proc.stderr[-2000:]
    proc = run([tools.bench, "-m", tiny_gguf, "-p", 16, "-n", 4, "-r", 1, "-t", 2, "-o", "json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row, *_) = json.loads(proc.stdout)
    assert tools.build_info["llama.cpp"].startswith(row["build_commit"])


def test_a_process_waits_for_the_builder_and_then_builds_nothing(built, tmp_path):
    """One builder per key across processes: while another holds the key's lock (here: this test), `build`
    waits; when the lock is released with the build in place, it takes that build."""
    from runner.locks import store_lock

    _, tools, _ = built
    cache = tmp_path / "cache"
    cache.mkdir()
    with store_lock(cache / f"{tools.key}.lock"):
        proc = subprocess.Popen([sys.executable, "-m", "runner.backends.llama_tools", "build"], cwd=REPO,
                                env=_fresh_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        assert proc.poll() is None, proc.communicate()  # waiting on the lock
        shutil.copytree(tools.quantize.parent.parent, cache / tools.key)  # "the other builder" publishes
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "(cached," in out and str(cache / tools.key / "bin" / "llama-quantize") in out
    assert lt.builds(cache) == []


def _path_with(tmp_path: Path, *names: str) -> str:
    """A PATH holding only links to `names` (the rest of the machine's tools are out of sight)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in names:
        if found := shutil.which(name):
            (folder / name).symlink_to(found)
    return str(folder)


def _fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", lt.SDIST_ENV, lt.CMAKE_ARGS_ENV)}
    return {**env, lt.CACHE_ENV: str(tmp_path / "cache"), **extra}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()  # progress lines may come first ("downloading ...")
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def _nothing_built(cache: Path) -> None:
    """Only lock files and an empty sdist folder: nothing downloaded, extracted or compiled."""
    leftovers = [p for p in cache.rglob("*") if not p.name.endswith(".lock")] if cache.exists() else []
    assert [p.name for p in leftovers] in ([], ["sdist"]), leftovers


def test_no_cmake_is_one_clear_error_and_nothing_is_built(tmp_path):
    if shutil.which("cmake", path=str(Path(sys.executable).parent)):
        pytest.skip("this venv has its own cmake (pip install cmake)")
    env = _fresh_env(tmp_path, PATH=_path_with(tmp_path, "c++", "cc", "git"))
    t0 = time.perf_counter()
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "build"], cwd=REPO, env=env)
    line = _one_error_line(proc)
    assert "cmake not found on PATH" in line and "install" in line
    assert time.perf_counter() - t0 < 60
    _nothing_built(tmp_path / "cache")


def test_no_compiler_is_one_clear_error(tmp_path):
    env = _fresh_env(tmp_path, PATH=_path_with(tmp_path, "cmake", "git"))
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "build"], cwd=REPO, env=env)
    line = _one_error_line(proc)
    assert "no C compiler" in line and "C++ compiler" in line
    _nothing_built(tmp_path / "cache")


def test_an_unobtainable_sdist_is_one_clear_error(tmp_path):
    if not shutil.which("cmake") or not shutil.which("c++"):
        pytest.skip("needs cmake and a compiler to get as far as the sdist")
    env = {k: v for k, v in _fresh_env(tmp_path).items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")  # offline: no index, no find-links
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "build"], cwd=REPO, env=env)
    line = _one_error_line(proc)
    v = version("llama-cpp-python")
    assert f"cannot obtain the llama-cpp-python {v} sdist" in line and lt.SDIST_ENV in line
    _nothing_built(tmp_path / "cache")
    missing = _fresh_env(tmp_path, **{lt.SDIST_ENV: str(tmp_path / "nowhere.tar.gz")})
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "build"], cwd=REPO, env=missing)
    assert "no such file" in _one_error_line(proc)


def test_a_failed_build_is_one_line_naming_its_log(built, tmp_path):
    """A configure that fails (a flag llama.cpp refuses: LLAMA_CUBLAS is a FATAL_ERROR) from the cached sdist:
    one line with the log's last lines and its path, no build published."""
    _, tools, _ = built
    sdist = lt.cache_root() / "sdist" / tools.build_info["sdist"]
    if not sdist.is_file():
        pytest.skip(f"no cached sdist at {sdist}")
    env = _fresh_env(tmp_path, **{lt.SDIST_ENV: str(sdist), lt.CMAKE_ARGS_ENV: "-DLLAMA_CUBLAS=ON"})
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "build", "-j", "1"], cwd=REPO, env=env)
    line = _one_error_line(proc)
    assert "failed to build (cmake configure, exit 1)" in line and "LLAMA_CUBLAS" in line
    kept = Path(line.rsplit("full log: ", 1)[1])
    assert kept.is_file() and "LLAMA_CUBLAS" in kept.read_text()
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name not in ("sdist",)]  # nothing published or left
    assert lt.builds(cache) == []


def test_where_says_when_nothing_is_built(tmp_path):
    proc = run([sys.executable, "-m", "runner.backends.llama_tools", "where"], cwd=REPO, env=_fresh_env(tmp_path))
    assert proc.returncode == 1 and "not built for this setup" in proc.stdout
    assert not (tmp_path / "cache").exists()
