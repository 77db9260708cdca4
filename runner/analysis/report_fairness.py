"""The report's Fairness section: whether the cells can be compared at all (one generation contract per model,
one kind of device and hardware, speed measured alone) and the cross-engine noise floor."""

from __future__ import annotations

import pandas as pd

from runner.analysis.report_data import ReportData
from runner.analysis.report_format import fmt, missing, with_ci
from runner.analysis.report_render import Section
from runner.identity import parse_build_id


def fairness(d: ReportData) -> Section:
    contracts = d.findings.contracts
    contracts = contracts[[j in d.label_by_job for j in contracts.index]] if not contracts.empty else contracts
    if contracts.empty:
        return Section("Fairness", ["No ok cell records a generation contract."] + _engine_noise(d))
    text = []
    for model, group in contracts.groupby("model"):
        if problems := d.findings.contract_problems.get(str(model)):
            text.append(f"⚠️ **CONTRACT MISMATCH ({model})**: {'; '.join(problems)}. "
                        "Comparisons between these cells are not fair.")
        else:
            text.append(f"✅ All {len(group)} ok cells of `{model}` share one generation contract "
                        "and identical rendered prompt token ids.")
    text += _devices(d) + _hardware(d) + _speed_comparability(d)
    if len(contracts.drop_duplicates()) == 1:  # one contract: show it once
        table = pd.DataFrame({"Field": contracts.columns, "Value": contracts.iloc[0].values})
    else:
        table = contracts.rename(index=d.label_by_job).rename_axis("Build").reset_index()
    return Section("Fairness", text + _engine_noise(d), table)


def _devices(d: ReportData) -> list[str]:
    """Every cell of one model must run on the same kind of device, or its comparison says so loudly."""
    out = []
    for model, group in d.ok.groupby("model"):
        devices = {dev for dev in group.get("device", pd.Series(dtype=object)).dropna()}
        per_cell = ", ".join(f"{r['label']}: {r.get('device') or 'unknown'} ({r.get('compute_dtype') or '?'})"
                             for _, r in group.iterrows())
        if len(devices) > 1:
            out.append(f"⚠️ **DEVICE MISMATCH ({model})**: cells ran on {', '.join(sorted(devices))} — speed and "
                       f"even outputs are not comparable across them. Per cell: {per_cell}.")
        else:
            out.append(f"Devices ({model}): {per_cell}.")
    return out


def _hardware(d: ReportData) -> list[str]:
    """Speed compares only within one kind of hardware (host fingerprint: CPU, cores, GPU)."""
    out = []
    if "host_fingerprint" not in d.ok:
        return out
    for model, group in d.ok.groupby("model"):
        hosts = group.dropna(subset=["host_fingerprint"]).groupby("host_fingerprint")
        if len(hosts) > 1:
            where = "; ".join(f"{g['host'].iloc[0]}: {', '.join(g['label'])}" for _, g in hosts)
            out.append(f"⚠️ **HARDWARE MISMATCH ({model})**: its cells ran on {len(hosts)} kinds of hardware ({where}). "
                       "Speed is compared only between cells on the same hardware; speed deltas across them "
                       "are left empty.")
    return out


def _speed_comparability(d: ReportData) -> list[str]:
    """Speed measured while other cells ran on the same host is not comparable."""
    overlapping = [d.label_by_job[j] for j in d.findings.parallel_jobs if j in d.label_by_job]
    flagged = sorted(set(overlapping) | {
        lab for lab, jobs in zip(d.ok["label"], d.ok.get("speed_parallel_jobs", pd.Series(dtype=float)))
        if not missing(jobs) and jobs > 1})
    if not flagged:
        return ["Speed: every cell was measured alone on its host (no other cell ran at the same time)."]
    return [f"⚠️ **SPEED NOT COMPARABLE**: {', '.join(flagged)} were measured while other cells ran on the same "
            "host (a parallel launcher): they competed for the CPU/GPU. Re-run with the basic launcher (or "
            "`hydra.launcher.n_jobs=1`) to compare speed."]


def _engine_noise(d: ReportData) -> list[str]:
    """KLD of the baseline precision's cell in the other format vs the baseline: the engine noise floor."""
    out = []
    for _, r in d.ok.iterrows():
        base = r.get("fidelity_baseline")
        if missing(base) or missing(r.get("kld_mean")) or "_" not in str(base):
            continue
        base_format, base_precision, base_method = parse_build_id(str(base))
        if r["precision"] == base_precision and r["format"] != base_format and r.get("method", "none") == base_method:
            out.append(f"Cross-engine noise floor: **{r['label']}** vs `{base}` (same weights, other engine): "
                       f"KLD {with_ci(r, 'kld_mean')}, top-1 {fmt(r.get('top1_pct'))}%, answer agreement "
                       f"{fmt(r.get('answer_agreement'))}. Differences of this size are engine noise, "
                       "not quantization.")
    return out or ["Cross-engine noise floor: not measured (no FP16 cell of a second format in this sweep)."]
