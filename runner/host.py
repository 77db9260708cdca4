"""The host a cell runs on: CPU model, cores, GPU name, and the scheduler job that ran it. Speed measured
on other hardware is not comparable."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from runner.records import HostInfo, RuntimeInfo


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.processor()
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    """The first GPU's name (nvidia-smi), the chip on Apple silicon (its GPU is part of it), else None."""
    if shutil.which("nvidia-smi"):
        names = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
        if names:
            return names.splitlines()[0].strip()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return _cpu_model()
    return None


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def available_cpus() -> int:
    """Cores this process may use: its Slurm allocation, else its affinity mask, else the machine's."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if allocated.isdigit() and int(allocated) > 0:
        return int(allocated)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _hardware() -> tuple[str, int, str | None, str]:
    return _cpu_model(), available_cpus(), _gpu_name(), f"{platform.system()}-{platform.machine()}"


def host_info() -> HostInfo:
    """This process's hardware (the fingerprint) and, under Slurm, its job id, array index and node."""
    cpu, cores, gpu, plat = _hardware()
    fingerprint = hashlib.sha256(f"{cpu}|{cores}|{gpu}|{plat}".encode()).hexdigest()[:16]
    env = os.environ
    array_index = env.get("SLURM_ARRAY_TASK_ID", "")
    return HostInfo(fingerprint=fingerprint, cpu=cpu, cores=cores, gpu=gpu, platform=plat, hostname=platform.node(),
                    scheduler_job=env.get("SLURM_JOB_ID"), array_job=env.get("SLURM_ARRAY_JOB_ID"),
                    array_index=int(array_index) if array_index.isdigit() else None,
                    node=env.get("SLURMD_NODENAME"))


def measured_on(host: HostInfo, runtime: RuntimeInfo) -> str:
    """The tag a speed measurement carries: same hardware, engine device and threads means comparable."""
    threads = runtime.threads()
    return f"{host.fingerprint}/{runtime.device}" + (f"/{threads}" if threads else "")
