"""What Slurm says about a sweep's jobs: their state and pending reason (`squeue`), the node sizes and limits
of a partition (`sinfo`, `scontrol show partition`), and whether a job can ever start there.

A job pending for `Resources`, `Priority`, `QOSMaxJobsPerUserLimit` or `ReqNodeNotAvail` starts once others
finish; one pending for a reason in `NEVER`, or asking for more than the partition's largest node, never does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Pending reasons no wait satisfies: the job breaks a limit of its partition (said when no size is at fault).
NEVER = {
    "PartitionConfig": "it breaks a limit of the partition",
    "PartitionNodeLimit": "its node count (hydra.launcher.nodes) is outside the partition's MinNodes..MaxNodes",
    "PartitionTimeLimit": "its time limit (hydra.launcher.timeout_min) is over the partition's MaxTime",
    "BadConstraints": "no node of the partition has the features it asks for (hydra.launcher.constraint)",
}


@dataclass(frozen=True)
class QueuedJob:
    """One job (or array task, `12_3`) as squeue lists it."""

    id: str
    state: str  # PENDING, RUNNING, COMPLETING, ...
    reason: str  # why it pends ("None" while it runs)
    partition: str
    cpus: int  # per node: cpus_per_task × tasks_per_node
    mem_mb: int | None  # per node
    time_min: int | None  # its time limit (None: unlimited)
    nodes: int = 1

    @property
    def array_id(self) -> str:
        return self.id.split("_")[0]


@dataclass(frozen=True)
class Partition:
    """What a partition can give one job: its nodes' sizes (per-node limits applied) and its job limits."""

    name: str
    sizes: tuple[tuple[int, int], ...]  # (CPUs, memory MB) of each node
    max_time_min: int | None = None  # MaxTime (None: unlimited)
    min_nodes: int = 0
    max_nodes: int | None = None  # None: unlimited


_LAST: dict[str, QueuedJob] = {}  # this process's jobs as squeue last listed them (kept by slurm_watch)


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def squeue(ids: Iterable[str]) -> dict[str, QueuedJob] | None:
    """The jobs of `ids` (`12` or `12_3`: every task of array 12) that Slurm still holds, one per array task;
    None when squeue cannot answer (not installed, controller down, or every id already forgotten)."""
    arrays = sorted({str(i).split("_")[0] for i in ids})
    if not arrays:
        return {}
    out = _run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%r|%P|%c|%m|%l|%D"])
    if out is None:
        return None
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 8 and parts[4].isdigit():
            jobs[parts[0]] = QueuedJob(parts[0], parts[1], parts[2], parts[3], int(parts[4]), megabytes(parts[5]),
                                       minutes(parts[6]), int(parts[7]) if parts[7].isdigit() else 1)
    return jobs


def remember(jobs: dict[str, QueuedJob]) -> None:
    """Keep squeue's latest answer for the progress display."""
    _LAST.clear()
    _LAST.update(jobs)


def last_seen() -> dict[str, QueuedJob]:
    return dict(_LAST)


def default_partition() -> str | None:
    out = _run(["sinfo", "-h", "-o", "%P"]) or ""
    return next((p.rstrip("*") for p in out.split() if p.endswith("*")), None)


def partition(name: str) -> Partition | None:
    """`name`'s node sizes and limits (sinfo, scontrol show partition); None when sinfo does not know it."""
    nodes = _run(["sinfo", "-h", "-N", "-p", name, "-o", "%c|%m"])
    sizes = {(int(c), int(m)) for c, m in (line.split("|") for line in (nodes or "").split())
             if c.isdigit() and m.isdigit()}
    if not sizes:
        return None
    limits = dict(re.findall(r"(\w+)=(\S+)", _run(["scontrol", "show", "partition", name, "-o"]) or ""))
    cap_cpus, cap_mem = (int(v) if (v := limits.get(k, "")).isdigit() else None
                         for k in ("MaxCPUsPerNode", "MaxMemPerNode"))
    sizes = {(min(c, cap_cpus or c), min(m, cap_mem or m)) for c, m in sizes}
    min_nodes, max_nodes = limits.get("MinNodes", "0"), limits.get("MaxNodes", "")
    return Partition(name, tuple(sorted(sizes, reverse=True)), minutes(limits.get("MaxTime", "UNLIMITED")),
                     int(min_nodes) if min_nodes.isdigit() else 0, int(max_nodes) if max_nodes.isdigit() else None)


def misfit(cpus: int, mem_mb: int | None, time_min: int | None, part: Partition, tasks_per_node: int = 1,
           nodes: int = 1) -> str | None:
    """`asks for ..., the largest node has ...; set ...`: what a job of this size asks beyond every node of
    `part` or its limits, and the launcher settings that make it fit; None if it fits."""
    mem = mem_mb or 0
    if not any(c >= cpus and m >= mem for c, m in part.sizes):
        top_cpus, top_mem = max(c for c, _ in part.sizes), max(m for _, m in part.sizes)
        fixes = []
        if cpus > top_cpus:
            fixes.append(f"hydra.launcher.cpus_per_task={max(top_cpus // max(tasks_per_node, 1), 1)}")
        if mem > top_mem:  # null (Slurm's default memory) where a node has less than 1 GB
            fixes.append(f"hydra.launcher.mem_gb={top_mem // 1024 or 'null'}")
        asks = _cpus(cpus) + (f" and {gigabytes(mem)}" if mem else "")
        if not fixes:  # each alone fits some node, both together none
            sizes = ", ".join(f"{_cpus(c)} and {gigabytes(m)}" for c, m in part.sizes)
            return (f"asks for {asks} per node, no node has both (its nodes: {sizes}); "
                    "set hydra.launcher.cpus_per_task or hydra.launcher.mem_gb lower")
        has = "the largest node has" if (top_cpus, top_mem) in part.sizes else "its nodes have at most"
        return f"asks for {asks} per node, {has} {_cpus(top_cpus)} and {gigabytes(top_mem)}; set {' '.join(fixes)}"
    if time_min is not None and part.max_time_min is not None and time_min > part.max_time_min:
        return (f"asks for a time limit of {time_min} min, the partition allows {part.max_time_min} min; "
                f"set hydra.launcher.timeout_min={part.max_time_min}")
    if nodes < part.min_nodes or (part.max_nodes is not None and nodes > part.max_nodes):
        allowed = f"{part.min_nodes} to {part.max_nodes if part.max_nodes is not None else 'any number of'}"
        return (f"asks for {nodes} node{'s' * (nodes != 1)}, the partition takes {allowed} nodes; "
                "set hydra.launcher.partition to another partition")
    return None


def never_starts(job: QueuedJob, part: Partition | None, tasks_per_node: int = 1) -> str | None:
    """The one line saying why a pending job can never start, naming the settings to change; None if it can."""
    if job.state != "PENDING":
        return None
    fit = misfit(job.cpus, job.mem_mb, job.time_min, part, tasks_per_node, job.nodes) if part else None
    why = f"it {fit}" if fit else None
    if why is None and job.reason in NEVER:
        why = f"{NEVER[job.reason]}; see scontrol show partition {job.partition}"
    if why is None:
        return None
    pending = f" (pending: {job.reason})" if job.reason != "None" else ""
    return f"Slurm job {job.array_id} can never start on partition {job.partition}{pending}: {why}"


def request_problem(launcher: Mapping[str, Any]) -> str | None:
    """Before anything is submitted: why jobs with these launcher settings could never start (no such partition,
    or larger than its largest node), or None (also when sinfo cannot tell)."""
    name = launcher.get("partition") or default_partition()
    if not name:
        return None
    known = [p.rstrip("*") for p in (_run(["sinfo", "-a", "-h", "-o", "%P"]) or "").split()]
    if known and (unknown := [p for p in str(name).split(",") if p not in known]):
        return f"Slurm has no partition {unknown[0]} (hydra.launcher.partition={name}); it has {', '.join(known)}"
    part = partition(str(name))
    if part is None:
        return None
    tasks = int(launcher.get("tasks_per_node") or 1)
    mem = int(launcher["mem_gb"]) * 1024 if launcher.get("mem_gb") else None
    timeout = int(launcher["timeout_min"]) if launcher.get("timeout_min") else None
    why = misfit(int(launcher.get("cpus_per_task") or 1) * tasks, mem, timeout, part, tasks,
                 int(launcher.get("nodes") or 1))
    return f"Slurm jobs on partition {name} could never start: each {why}" if why else None


def megabytes(text: str) -> int | None:
    """squeue's memory (`32G`, `500M`, `1T`, a bare number of MB) in MB."""
    match = re.fullmatch(r"([\d.]+)([KMGT]?)B?", text.strip().upper())
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _cpus(n: int) -> str:
    return f"{n} CPU" + ("s" if n != 1 else "")


def gigabytes(mb: int) -> str:
    return f"{mb / 1024:.1f}".rstrip("0").rstrip(".") + " GB"


def minutes(text: str) -> int | None:
    """A Slurm time (`90`, `30:00`, `4:00:00`, `1-02:03:00`, `UNLIMITED`) in whole minutes; None: unlimited."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NOT_SET", "N/A"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":") if p.isdigit()]
    if not parts or (days and not days.isdigit()):
        return None
    if days:  # days-hours[:minutes[:seconds]]
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:  # minutes:seconds
        h, m, s = 0, *parts
    else:
        h, m, s = 0, parts[0], 0
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)
