"""llama.cpp's own tools (`llama-imatrix`, `llama-quantize`, `llama-perplexity`, `llama-bench`), built from the
very llama.cpp the bindings run: the tree vendored in the sdist of the installed llama-cpp-python version.

The wheel ships none of them, so they are built here, once per machine and setup, only when asked for
(`tools()`; `python -m runner.backends.llama_tools build` pays the cost up front).

Where a build lives. A machine-wide build cache, `~/.cache/runner/llama-tools/` (`RUNNER_LLAMA_TOOLS_CACHE`
overrides it), holds one folder per build key with the four static binaries (`bin/`), `build_info.json` and
`build.log`; `builds.jsonl` there gets one line per build (the build counter), `sdist/` the downloaded sdist.
The key (`hash_payload`) holds everything the binaries depend on: the llama-cpp-python version, the llama.cpp
build the bindings load (`gguf.engine()["llama.cpp"]`), the cmake flags (GPU backend of the bindings, extra
flags, CFLAGS/CXXFLAGS/LDFLAGS), the C and C++ compilers' versions, the platform and, for `-march=native`
builds (the default, as the bindings'), the CPU (model and feature flags), and the source patches (`PATCHES`:
logging only, so the tools print their last lines). One builder per key across processes (the store's lock,
`runner/locks.py`, on `<cache>/<key>.lock`); a build fills a temp dir that is renamed into place, so a killed
build leaves no half entry. A store given to `tools()` records the build as a `llama-tools` entry keyed by
that build and the binaries' sha256, registering the binaries as files outside the store (like a prebuilt
artifact), so `python -m runner.store verify` re-hashes them. Tests' fresh stores thus cost a registration,
never a build.

Same llama.cpp. The sdist's vendored commit (`.git/modules/vendor/llama.cpp/HEAD`) must start with the commit
the loaded bindings report (`ggml_commit()`, short, "-dirty" because the sdist's git metadata has no objects),
and the tools' `--version` must name the same llama.cpp version and commit; otherwise nothing is published.
Flags follow how pip builds the bindings: Release, `GGML_NATIVE` default, OpenMP default; a GPU build of the
bindings (`gguf.gpu_backend()`) adds its `GGML_<BACKEND>=ON`. Other deviations (BLAS, custom CMAKE_ARGS the
bindings were built with): `RUNNER_LLAMA_TOOLS_CMAKE_ARGS` (appended, part of the key).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runner.locks import store_lock
from runner.store import Entry, Store, ensure_writable, hash_payload, sha256_file

log = logging.getLogger(__name__)

TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity", "llama-bench")
PACKAGE = "llama-cpp-python"
BUILD_CODE_VERSION = 1  # bump when how the tools are built or checked changes (a new key: a rebuild)
STORE_KIND = "llama-tools"

CACHE_ENV = "RUNNER_LLAMA_TOOLS_CACHE"  # the machine-wide build cache (default ~/.cache/runner/llama-tools)
SDIST_ENV = "RUNNER_LLAMA_TOOLS_SDIST"  # the sdist file to use (offline machines)
CMAKE_ARGS_ENV = "RUNNER_LLAMA_TOOLS_CMAKE_ARGS"  # extra cmake flags, part of the key
JOBS_ENV = "RUNNER_LLAMA_TOOLS_JOBS"  # build parallelism (default: the cores this process may use)
FLAG_ENVS = ("CFLAGS", "CXXFLAGS", "LDFLAGS")  # read by cmake at configure time: part of the key when set

# Static (the binaries need no build dir), tools only. LLAMA_CURL is deprecated and ignored in this llama.cpp;
# its HTTPS switch is LLAMA_OPENSSL (these tools never download). Release is what pip's build uses.
BASE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_COMMON=ON",
              "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
              "-DGGML_CCACHE=OFF")
GPU_FLAGS = {"cuda": "-DGGML_CUDA=ON", "hip": "-DGGML_HIP=ON", "vulkan": "-DGGML_VULKAN=ON",
             "sycl": "-DGGML_SYCL=ON", "metal": "-DGGML_METAL=ON"}
# Patches to the extracted tree, logging only (common/, which libllama and ggml do not contain): id → (file, old,
# new). llama.cpp's common log is drained by a worker thread and its singleton is leaked on purpose
# (ggml-org/llama.cpp#22142), so a tool's last lines -- llama-perplexity's "Final estimate: PPL" -- are lost now
# and then at exit (measured: 1 run in 3 with its output piped). The patch drains the log at exit (not on Windows,
# where upstream's hang was). Their ids are in the build key and build_info.
PATCHES = {
    "common-log-drain-at-exit": (
        "common/log.cpp",
        "        log = new common_log;\n",
        "        log = new common_log;\n#if !defined(_WIN32)\n"
        "        std::atexit([]() { common_log_pause(common_log_main()); });  // runner: drain the log at exit\n"
        "#endif\n"),
}
SKIP_DIRS = ("models", "docs", "media")  # of vendor/llama.cpp: vocab files and documentation, no build input
VERIFY_TIMEOUT_S = 60


class LlamaToolsError(RuntimeError):
    """Why the tools cannot be had: one line naming what is missing or what failed."""


class MissingBuildTool(LlamaToolsError):
    """cmake or a compiler is missing: the tools cannot be built here (tests skip on it unless required)."""


@dataclass(frozen=True)
class LlamaTools:
    """The four binaries of one build, its `build_info` (for records) and where it is recorded."""

    imatrix: Path
    quantize: Path
    perplexity: Path
    bench: Path
    build_info: dict[str, Any]
    key: str  # the build key (machine cache folder name)
    cache_hit: bool  # False: this call built them
    store_entry: str | None = None  # key of the `llama-tools` entry in the given store

    @property
    def paths(self) -> dict[str, Path]:
        return {"llama-imatrix": self.imatrix, "llama-quantize": self.quantize,
                "llama-perplexity": self.perplexity, "llama-bench": self.bench}

    @property
    def versions(self) -> dict[str, str]:
        """What an artifact made with these tools depends on, for its store payload (like `gguf.tool_versions`):
        the bindings' version, the vendored llama.cpp commit and the build's flags and compiler."""
        info = self.build_info
        return {PACKAGE: info[PACKAGE], "llama.cpp": info["llama.cpp"],
                "llama-tools-flags": " ".join(info["cmake_flags"]), "llama-tools-compiler": info["compiler"]["cxx"]}

    def record(self) -> dict[str, Any]:
        """The tool build as a record names it (small: the whole `build_info` is in the store entry)."""
        info = self.build_info
        return {"key": self.key, PACKAGE: info[PACKAGE], "llama.cpp": info["llama.cpp"],
                "tools_version": info["tools_version"], "cmake_flags": info["cmake_flags"],
                "patches": info.get("patches", []), "compiler": info["compiler"]["cxx"], "build_s": info["build_s"],
                "cache_hit": self.cache_hit}


@dataclass
class Setup:
    """What a build depends on, found without building anything."""

    version: str
    bindings: dict[str, str]  # the loaded library: llama.cpp (ggml_commit), llama_version, gpu_backend, system_info
    flags: list[str]
    compilers: dict[str, str]  # c / cxx: resolved paths
    compiler_versions: dict[str, str]
    target: dict[str, str]
    env_flags: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)
    key: str = ""


# ---------------------------------------------------------------- where things are


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "runner" / "llama-tools").expanduser()


def sdist_name(version: str) -> str:
    return f"llama_cpp_python-{version}.tar.gz"


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise LlamaToolsError(f"{PACKAGE} is not installed in {sys.prefix}: llama.cpp's tools are built from "
                              f"the sdist of the installed version") from None


def _bindings() -> dict[str, str]:
    """The llama.cpp build the bindings load: its commit (ggml_commit), llama version, GPU backend, features."""
    import ctypes

    import llama_cpp
    import llama_cpp.llama_cpp as lib

    from runner.backends.gguf import engine, gpu_backend

    fn = getattr(lib._lib, "llama_version", None)
    llama_version = "unknown"
    if fn is not None:
        fn.restype = ctypes.c_char_p
        llama_version = fn().decode(errors="replace")
    return {"llama.cpp": engine()["llama.cpp"], "llama_version": llama_version, "gpu_backend": gpu_backend() or "cpu",
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise LlamaToolsError(f"{cmd[0]} does not run ({e})") from None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise LlamaToolsError(f"`{' '.join(cmd)}` failed (exit {proc.returncode})")
    return lines[0].strip()


def _which(names: tuple[str, ...], env: str | None = None) -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    if env and os.environ.get(env):
        value = os.environ[env].split()[0]
        return shutil.which(value) or shutil.which(value, path=venv_bin)
    for name in names:
        if found := shutil.which(name) or shutil.which(name, path=venv_bin):
            return found
    return None


def find_cmake() -> str:
    """cmake on PATH or in this venv (`pip install cmake`), else one clear error."""
    cmake = _which(("cmake",))
    if cmake is None:
        raise MissingBuildTool("cannot build llama.cpp's tools: cmake not found on PATH "
                              "(install it: apt-get install cmake, brew install cmake, or pip install cmake)")
    return cmake


def find_compilers() -> dict[str, str]:
    """The C and C++ compilers cmake will use ($CC/$CXX, else cc/gcc/clang and c++/g++/clang++), else one error."""
    found = {"c": _which(("cc", "gcc", "clang"), "CC"), "cxx": _which(("c++", "g++", "clang++"), "CXX")}
    missing = [what for what, key in (("C compiler ($CC, cc, gcc or clang)", "c"),
                                      ("C++ compiler ($CXX, c++, g++ or clang++)", "cxx")) if found[key] is None]
    if missing:
        raise MissingBuildTool(f"cannot build or find llama.cpp's tools: no {' and no '.join(missing)} on PATH "
                              f"(install one: apt-get install build-essential, or xcode-select --install)")
    return {k: str(v) for k, v in found.items()}


def _cpu_target() -> dict[str, str]:
    """This CPU, for a `-march=native` build: its model and (Linux) a digest of its feature flags, since a
    virtual machine's model name ("Intel(R) Xeon(R) Processor") does not say which instructions it has."""
    from runner.host import host_info

    target = {"cpu": host_info().cpu}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next((ln.split(":", 1)[1] for ln in cpuinfo.read_text(errors="replace").splitlines()
                      if ln.startswith("flags")), "")
        target["cpu_flags"] = hash_payload(sorted(flags.split()))[:16]
    return target


def cmake_flags(bindings: dict[str, str]) -> list[str]:
    """The flags of the tool build: static tools, the bindings' GPU backend, extra flags from the environment."""
    flags = list(BASE_FLAGS)
    gpu = bindings["gpu_backend"]
    extra = shlex.split(os.environ.get(CMAKE_ARGS_ENV, ""))
    if gpu in GPU_FLAGS:
        flags.append(GPU_FLAGS[gpu])
    elif gpu != "cpu" and not extra:
        raise LlamaToolsError(f"the bindings offload to a GPU backend this module does not know "
                              f"({bindings['system_info'][:120]}): set {CMAKE_ARGS_ENV} to the GGML_* flags "
                              f"they were built with")
    elif gpu == "cpu" and sys.platform == "darwin":
        flags.append("-DGGML_METAL=OFF")  # Metal is on by default on macOS; these bindings were built without it
    return flags + extra


def setup() -> Setup:
    """Everything the build key holds; needs the compilers (their versions are in the key), never cmake."""
    version = installed_version()
    bindings = _bindings()
    flags = cmake_flags(bindings)
    compilers = find_compilers()
    versions = {k: _first_line([path, "--version"]) for k, path in compilers.items()}
    native = not any(f.upper().startswith("-DGGML_NATIVE=") and f.split("=", 1)[1].upper() in ("OFF", "0", "FALSE")
                     for f in flags)
    target = {"platform": f"{platform.system()}-{platform.machine()}"}
    if native:  # -march=native: the binaries are for this CPU
        target.update(_cpu_target())
    env_flags = {k: os.environ[k] for k in FLAG_ENVS if os.environ.get(k)}
    s = Setup(version, bindings, flags, compilers, versions, target, env_flags)
    s.payload = {"code": BUILD_CODE_VERSION, PACKAGE: version, "llama.cpp": bindings["llama.cpp"],
                 "cmake_flags": flags, "env": env_flags, "compiler": versions, "target": target,
                 "patches": sorted(PATCHES)}
    s.key = hash_payload(s.payload)
    return s


# ---------------------------------------------------------------- the cache


def _read_info(folder: Path) -> dict[str, Any] | None:
    """The build_info of a complete cached build whose binaries still have their recorded sizes, else None."""
    try:
        info = json.loads((folder / "build_info.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for name, rec in info.get("binaries", {}).items():
        try:
            if (folder / "bin" / name).stat().st_size != rec["bytes"]:
                raise FileNotFoundError
        except FileNotFoundError:
            log.warning("llama.cpp tool build %s is damaged (%s missing or changed): rebuilding it",
                        folder, name)
            return None
    return info if set(info.get("binaries", {})) == set(TOOLS) else None


def _result(folder: Path, info: dict[str, Any], key: str, hit: bool) -> LlamaTools:
    b = folder / "bin"
    return LlamaTools(b / "llama-imatrix", b / "llama-quantize", b / "llama-perplexity", b / "llama-bench",
                      info, key, hit)


def cached(s: Setup | None = None) -> LlamaTools | None:
    """The tools of this setup when the machine cache holds them, else None (builds nothing)."""
    s = s or setup()
    folder = cache_root() / s.key
    info = _read_info(folder)
    return None if info is None else _result(folder, info, s.key, True)


def builds(root: Path | None = None) -> list[dict[str, Any]]:
    """The machine cache's build log (one row per build actually made)."""
    path = (root or cache_root()) / "builds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tools(store: Store | None = None, *, jobs: int | None = None,
          progress: Callable[[str], None] | None = None) -> LlamaTools:
    """llama.cpp's four tools for the installed bindings: from the machine cache, else built there (once across
    processes). With `store`, the build is recorded there as a `llama-tools` entry (binaries registered)."""
    s = setup()
    root = cache_root()
    lock_kind, lease_s = (store.lock_kind, store.lease_s) if store is not None else ("file", 60.0)
    result = cached(s)
    if result is None:
        try:
            ensure_writable(root)
        except OSError as e:
            raise LlamaToolsError(f"the llama.cpp tools cache {root} is not writable ({e}): set {CACHE_ENV}") from None
        with store_lock(root / f"{s.key}.lock", lock_kind, lease_s):
            result = cached(s)
            if result is None:
                result = _build(s, root, jobs, progress)
    if store is not None:
        entry = register(store, result)
        result = LlamaTools(**{**result.__dict__, "store_entry": entry.key})
    return result


def register(store: Store, t: LlamaTools) -> Entry:
    """Record a tool build in `store`: keyed by the build and its binaries' content, binaries registered."""
    payload = {"build": t.key, "binaries": {n: r["sha256"] for n, r in sorted(t.build_info["binaries"].items())}}
    return store.get_or_build(STORE_KIND, payload, lambda tmp: {"dir": str(t.imatrix.parent),
                                                                "build_info": t.build_info})


# ---------------------------------------------------------------- building


def _jobs(jobs: int | None) -> int:
    from runner.host import available_cpus

    if jobs is None and os.environ.get(JOBS_ENV, "").isdigit():
        jobs = int(os.environ[JOBS_ENV])
    return max(1, jobs or available_cpus())


def obtain_sdist(version: str, root: Path, say: Callable[[str], None] = log.info) -> Path:
    """The sdist of exactly `version`: $RUNNER_LLAMA_TOOLS_SDIST, the cached copy, else `pip download` into it."""
    name = sdist_name(version)
    if os.environ.get(SDIST_ENV):
        given = Path(os.environ[SDIST_ENV]).expanduser()
        if not given.is_file():
            raise LlamaToolsError(f"{SDIST_ENV}={given}: no such file (it should be {name})")
        return given
    cached_copy = root / "sdist" / name
    if cached_copy.is_file():
        return cached_copy
    tmp = root / "sdist" / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    say(f"downloading the {PACKAGE} {version} sdist (pip download) into {cached_copy.parent}")
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", str(tmp), f"{PACKAGE}=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            rc, out = proc.returncode, (proc.stderr or proc.stdout)
        except (OSError, subprocess.SubprocessError) as e:
            rc, out = -1, str(e)
        got = sorted(tmp.glob(f"llama[_-]cpp[_-]python-{version}.tar.gz"))
        if rc != 0 or not got:
            why = next((ln.strip() for ln in reversed(out.strip().splitlines()) if ln.strip().startswith("ERROR")),
                       (out.strip().splitlines() or ["no output"])[-1].strip())
            raise LlamaToolsError(f"cannot obtain the {PACKAGE} {version} sdist (offline?): `pip download "
                                  f"--no-deps --no-binary :all: {PACKAGE}=={version}` failed ({why}); put the file "
                                  f"at {cached_copy} or set {SDIST_ENV}=/path/to/{name}")
        os.replace(got[0], cached_copy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached_copy


def extract(sdist: Path, dest: Path, version: str) -> tuple[Path, str]:
    """Extract vendor/llama.cpp (and its git metadata, so the build names its commit as the bindings' did) into
    `dest`; returns (the llama.cpp source dir, the vendored commit read from the sdist)."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            if len(tops) != 1:
                raise LlamaToolsError(f"{sdist}: not a {PACKAGE} sdist (several top-level folders)")
            top = tops.pop()
            vendor, gitdir = f"{top}/vendor/llama.cpp/", f"{top}/.git/modules/vendor/llama.cpp/"
            skip = tuple(f"{vendor}{d}/" for d in SKIP_DIRS)
            keep = [m for m in members if m.name.startswith((vendor, gitdir)) and not m.name.startswith(skip)]
            if not any(m.name.startswith(f"{vendor}tools/quantize/") for m in keep):
                raise LlamaToolsError(f"{sdist}: has no vendor/llama.cpp/tools/quantize: not a {PACKAGE} sdist")
            pkg_info = tar.extractfile(f"{top}/PKG-INFO")
            meta = pkg_info.read().decode(errors="replace") if pkg_info else ""
            if f"\nVersion: {version}\n" not in meta:
                raise LlamaToolsError(f"{sdist}: is not the {PACKAGE} {version} sdist (PKG-INFO says otherwise)")
            tar.extractall(dest, members=keep, filter="data")
    except (tarfile.TarError, OSError, KeyError) as e:
        raise LlamaToolsError(f"{sdist}: cannot extract ({e}); delete it to download it again") from None
    return dest / top / "vendor" / "llama.cpp", _head(dest / top / ".git" / "modules" / "vendor" / "llama.cpp")


def _head(gitdir: Path) -> str:
    """The commit a git dir's HEAD names (a detached hash, or a branch in refs/ or packed-refs), else unknown."""
    try:
        head = (gitdir / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            if (gitdir / ref).is_file():
                head = (gitdir / ref).read_text().strip()
            else:
                packed = (gitdir / "packed-refs").read_text().splitlines()
                head = next(ln.split()[0] for ln in packed if ln.endswith(f" {ref}"))
    except (OSError, StopIteration):
        return "unknown"
    return head if len(head) == 40 and all(c in "0123456789abcdef" for c in head) else "unknown"


def apply_patches(src: Path) -> list[str]:
    """Apply `PATCHES` to the extracted tree; returns the ids applied (a patch whose text is not there exactly
    once is skipped with a warning: another llama.cpp)."""
    applied = []
    for pid, (rel, old, new) in PATCHES.items():
        path = src / rel
        text = path.read_text() if path.is_file() else ""
        if text.count(old) != 1:
            log.warning("llama.cpp tools: patch %s does not apply to %s: skipped", pid, path)
            continue
        path.write_text(text.replace(old, new))
        applied.append(pid)
    return applied


def _short(commit: str) -> str:
    return commit.split("-", 1)[0]


def check_commit(vendored: str, loaded: str, version: str, sdist: Path) -> None:
    """The sdist must vendor the llama.cpp the bindings were built from (unknowable when either says unknown)."""
    short = _short(loaded)
    if "unknown" in (vendored, short) or not short:
        log.warning("cannot compare llama.cpp commits (sdist %s, bindings %s): building anyway", vendored, loaded)
        return
    if not vendored.startswith(short):
        raise LlamaToolsError(f"{sdist} vendors llama.cpp {vendored[:12]}, but the loaded {PACKAGE} {version} runs "
                              f"{loaded}: reinstall {PACKAGE} from that sdist, or set {SDIST_ENV} to the one it "
                              f"was built from")


def _run_logged(cmd: list[str], logfile: Path, cwd: Path, step: str,
                progress: Callable[[str], None] | None) -> None:
    with open(logfile, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
        assert proc.stdout is not None
        shown = -1
        for line in proc.stdout:
            f.write(line)
            if progress and line.startswith("[") and "/" in line.split("]", 1)[0]:
                done, total = line[1:].split("]", 1)[0].split("/", 1)
                if done.strip().isdigit() and total.strip().isdigit():
                    pct = 100 * int(done) // max(1, int(total))
                    if pct // 10 > shown:
                        shown = pct // 10
                        progress(f"{step}: {pct}% ({done.strip()}/{total.strip()})")
        rc = proc.wait()
    if rc != 0:
        raise _BuildFailed(step, rc)


class _BuildFailed(Exception):
    def __init__(self, step: str, rc: int):
        super().__init__(step, rc)
        self.step, self.rc = step, rc


def _tail(logfile: Path, n: int = 3) -> str:
    """The build log's first errors (cmake's message, compiler errors, ninja's FAILED) and its last lines, joined."""
    lines = [ln.strip() for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    picked: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith("CMake Error"):
            picked += lines[i:i + 2]  # the message is on the next line
        elif ln.startswith("FAILED:") or " error: " in ln or ln.startswith("error:"):
            picked.append(ln)
        if len(picked) >= 4:
            break
    last = [ln for ln in lines[-n:] if not ln.startswith("See also")]  # "See also" names the deleted build dir
    return " | ".join(dict.fromkeys(picked + last))[:1500]


def verify(binaries: dict[str, Path], bindings: dict[str, str], vendored: str) -> dict[str, str]:
    """Run each binary once: `--version` (imatrix, perplexity, bench: exit 0, naming the bindings' llama.cpp
    version and commit) or `--help` (quantize: its usage, exit 1 — that is how llama-quantize answers --help).
    Returns what `--version` said."""
    said: dict[str, str] = {}
    for name, path in binaries.items():
        args = ["--help"] if name == "llama-quantize" else ["--version"]
        try:
            proc = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise LlamaToolsError(f"{path} does not run ({e})") from None
        out = proc.stdout + proc.stderr
        if name == "llama-quantize":
            if proc.returncode != 1 or "usage:" not in out:
                raise LlamaToolsError(f"{path} --help: exit {proc.returncode} without its usage ({out.strip()[-200:]})")
            continue
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        version = next((ln for ln in lines if ln.startswith("version:")), "")
        if proc.returncode != 0 or not version:
            raise LlamaToolsError(f"{path} --version: exit {proc.returncode} ({out.strip()[-200:]})")
        said[name] = version
        expect_version, short = bindings["llama_version"], _short(bindings["llama.cpp"])
        if expect_version != "unknown" and f"version: {expect_version} " not in version + " ":
            raise LlamaToolsError(f"{path} is llama.cpp {version!r}, the bindings load {expect_version}")
        tool_commit = version.rsplit("commit ", 1)[-1].rstrip(")") if "commit " in version else "unknown"
        if tool_commit == "unknown" or vendored == "unknown":  # git missing here, or metadata missing in the sdist
            log.warning("%s reports %r; the bindings run %s", path, version, bindings["llama.cpp"])
        elif not vendored.startswith(tool_commit):
            raise LlamaToolsError(f"{path} reports llama.cpp commit {tool_commit}, built from {vendored[:12]}")
        said[f"{name} built with"] = next((ln for ln in lines if ln.startswith("built with")), "")
    return said


def _build(s: Setup, root: Path, jobs: int | None, progress: Callable[[str], None] | None) -> LlamaTools:
    cmake = find_cmake()  # before anything is downloaded or extracted
    say = progress or (lambda msg: log.info("%s", msg))
    n = _jobs(jobs)
    final = root / s.key
    t0 = time.perf_counter()
    sdist = obtain_sdist(s.version, root, say)
    t_sdist = time.perf_counter()
    log.warning("building llama.cpp's tools for %s %s once for this machine (several minutes on 2 cores) into %s",
                PACKAGE, s.version, final)
    for stale in root.glob(f".tmp-{s.key[:16]}-*"):  # left by a killed build; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{s.key[:16]}-{uuid.uuid4().hex[:8]}"
    out = tmp / "out"
    (out / "bin").mkdir(parents=True)
    logfile = out / "build.log"
    try:
        say(f"extracting {sdist}")
        src, vendored = extract(sdist, tmp / "src", s.version)
        check_commit(vendored, s.bindings["llama.cpp"], s.version, sdist)
        patches = apply_patches(src)
        build_dir = tmp / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = [cmake, "-S", str(src), "-B", str(build_dir), *generator, *s.flags,
                     f"-DCMAKE_C_COMPILER={s.compilers['c']}", f"-DCMAKE_CXX_COMPILER={s.compilers['cxx']}"]
        t_conf = time.perf_counter()
        say("configuring (cmake)")
        try:
            _run_logged(configure, logfile, tmp, "configure", progress)
            t_compile = time.perf_counter()
            say(f"compiling {', '.join(TOOLS)} with -j {n}")
            _run_logged([cmake, "--build", str(build_dir), "--target", *TOOLS, "-j", str(n)], logfile, tmp,
                        "compile", progress)
        except _BuildFailed as e:
            kept = root / f"failed-{s.key[:16]}.log"
            shutil.copyfile(logfile, kept)
            raise LlamaToolsError(f"llama.cpp's tools failed to build (cmake {e.step}, exit {e.rc}): "
                                  f"{_tail(kept)} — full log: {kept}") from None
        t_done = time.perf_counter()
        binaries = {}
        for name in TOOLS:
            built = next((p for p in (build_dir / "bin" / name, build_dir / "bin" / "Release" / name,
                                      build_dir / "bin" / f"{name}.exe") if p.is_file()), None)
            if built is None:
                raise LlamaToolsError(f"cmake built no {name} in {build_dir / 'bin'}; log: {logfile}")
            binaries[name] = out / "bin" / built.name
            shutil.copy2(built, binaries[name])
        said = verify(binaries, s.bindings, vendored)
        cmake_version = _first_line([cmake, "--version"])
        info = {
            PACKAGE: s.version, "llama.cpp": vendored, "bindings_ggml_commit": s.bindings["llama.cpp"],
            "llama_version": s.bindings["llama_version"], "gpu_backend": s.bindings["gpu_backend"],
            "bindings_system_info": s.bindings["system_info"],
            "tools_version": said.get("llama-perplexity", ""),
            "built_with": said.get("llama-perplexity built with", ""),
            "sdist": sdist.name, "sdist_sha256": sha256_file(sdist),
            "cmake_flags": s.flags, "patches": patches, "env": s.env_flags,
            "generator": "Ninja" if generator else "default",
            "cmake": cmake_version, "compiler": s.compiler_versions, "target": s.target, "jobs": n,
            "sdist_s": round(t_sdist - t0, 2), "extract_s": round(t_conf - t_sdist, 2),
            "configure_s": round(t_compile - t_conf, 2), "compile_s": round(t_done - t_compile, 2),
            "build_s": round(time.perf_counter() - t0, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "key": s.key,
            "key_payload": s.payload,
            "binaries": {name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for name, p in binaries.items()},
        }
        (out / "build_info.json").write_text(json.dumps(info, indent=2))
        if final.exists():  # a damaged build
            shutil.rmtree(final)
        os.replace(out, final)
    except LlamaToolsError:
        if logfile.exists():  # the log outlives the temp dir (the configure/compile error names it)
            shutil.copyfile(logfile, root / f"failed-{s.key[:16]}.log")
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(root / "builds.jsonl", "a") as f:
        f.write(json.dumps({"key": s.key, PACKAGE: s.version, "build_s": info["build_s"], "jobs": n,
                            "pid": os.getpid(), "host": socket.gethostname(), "at": info["built_at"]}) + "\n")
    log.warning("built llama.cpp's tools in %.0f s: %s", info["build_s"], final / "bin")
    return _result(final, info, s.key, False)


# ---------------------------------------------------------------- CLI


def _show(t: LlamaTools, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"paths": {k: str(v) for k, v in t.paths.items()}, "cache_hit": t.cache_hit,
                          "store_entry": t.store_entry, "build_info": t.build_info}, indent=2))
        return
    for name, path in t.paths.items():
        print(f"{name}\t{path}")
    i = t.build_info
    print(f"build\t{t.key[:16]} ({'cached' if t.cache_hit else 'built now'}, {i['build_s']:.0f} s to build): "
          f"{PACKAGE} {i[PACKAGE]}, llama.cpp {i['llama.cpp'][:12]} ({i['tools_version']}), "
          f"{i['compiler']['cxx']}, {' '.join(i['cmake_flags'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.backends.llama_tools",
                                     description="llama.cpp's tools built from the installed bindings' sources")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tools (or find them in the machine cache) and print where they are")
    b.add_argument("--jobs", "-j", type=int, default=None, help=f"build parallelism (default ${JOBS_ENV} or all cores)")
    b.add_argument("--store", default=None, help="also record the build in this artifact store")
    b.add_argument("--json", action="store_true")
    w = sub.add_parser("where", help="print where the tools are, or say they are not built (builds nothing)")
    w.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.cmd == "where":
            s = setup()
            t = cached(s)
            if t is None:
                print(f"llama.cpp's tools are not built for this setup ({PACKAGE} {s.version}, key {s.key[:16]}) in "
                      f"{cache_root()}: python -m runner.backends.llama_tools build")
                return 1
            _show(t, args.json)
            return 0
        store = Store(args.store) if args.store else None
        t = tools(store, jobs=args.jobs, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        _show(t, args.json)
        return 0
    except LlamaToolsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
