"""What the report needs beyond the matrix, computed from the records once: the fairness checks (one
generation contract and identical prompt token ids per model, speed measured with no other cell running
on the same machine), the judge's noise floor, and every answer's check outcome. The report formats them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from runner.analysis.matrix_stats import JudgeNoise, judge_noise
from runner.records import CellRecord, GenerationContract


@dataclass
class SweepFindings:
    """What the report needs beyond the matrix, computed from the records once."""

    contracts: pd.DataFrame  # one row per ok cell with a contract (index: job): model + contract_fields
    contract_problems: dict[str, list[str]] = field(default_factory=dict)  # model → what differs between cells
    parallel_jobs: list[int | None] = field(default_factory=list)  # cells measured while another cell ran beside
    judge_noise: JudgeNoise | None = None
    checks: pd.DataFrame = field(default_factory=pd.DataFrame)  # prompt id × job: "✓" or "✗ reason" (repeat 0)


def contract_fields(c: GenerationContract) -> dict[str, str]:
    """The comparable part of a generation contract (the tokenizer path is machine-specific)."""
    s = c.sampler
    return {"temperature": f"{s.temperature:g}", "top_p": f"{s.top_p:g}", "top_k": str(s.top_k),
            "min_p": f"{s.min_p:g}", "repetition_penalty": f"{s.repetition_penalty:g}", "seed": str(s.seed),
            "max_tokens": str(s.max_tokens), "chat_template_sha": c.chat_template_sha[:12],
            "enable_thinking": str(c.enable_thinking), "stop_token_ids": str(c.stop_token_ids),
            "thinking": "stripped before judging" if c.strip_thinking else "kept"}


def _prompt_mismatches(records: list[CellRecord]) -> list[str]:
    shas: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        for r in rec.results:
            shas[r.prompt_id].add(r.prompt_token_ids_sha)
    return sorted(p for p, s in shas.items() if len(s) > 1)


def contract_problems(records: list[CellRecord], contracts: pd.DataFrame) -> dict[str, list[str]]:
    """Per model (templates and stop ids are per model): contract fields or prompt token ids that differ."""
    out = {}
    for model, group in contracts.groupby("model"):
        differ = [c for c in group.columns if group[c].nunique() > 1]
        prompts = _prompt_mismatches([r for r in records if r.cell.model == model and r.cell.job_num in group.index])
        out[str(model)] = ([f"{', '.join(differ)} differ between ok cells"] if differ else []) + (
            [f"rendered prompt token ids differ for {', '.join(prompts)}"] if prompts else [])
    return out


def parallel_cells(records: list[CellRecord]) -> list[CellRecord]:
    """Cells that generated answers while another cell of the sweep was running on the same machine."""
    out = []
    for rec in records:
        gen = rec.windows.get("generate")
        if not gen or rec.host is None or all(r.cache_hit for r in rec.results):
            continue
        for other in records:
            w = other.windows.get("cell")
            same_machine = other.host is not None and (other.host.hostname, other.host.fingerprint) == (
                rec.host.hostname, rec.host.fingerprint)
            if other is not rec and w and same_machine and w[0] < gen[1] and gen[0] < w[1]:
                out.append(rec)
                break
    return out


def check_table(records: list[CellRecord]) -> pd.DataFrame:
    """Each checkable prompt's outcome per cell (its first repeat), with the reason of every failure."""
    rows: dict[str, dict] = defaultdict(dict)
    for rec in records:
        for r in rec.results:
            if r.check is not None and r.repeat == 0:
                rows[r.prompt_id][rec.cell.job_num] = "✓" if r.check.passed else f"✗ {r.check.detail}"
    return pd.DataFrame.from_dict(rows, orient="index")


def find(records: list[CellRecord]) -> SweepFindings:
    ok = [r for r in records if r.status == "ok"]
    contracts = pd.DataFrame.from_dict({r.cell.job_num: {"model": r.cell.model, **contract_fields(r.contract)}
                                        for r in ok if r.contract is not None}, orient="index")
    return SweepFindings(contracts=contracts, checks=check_table(ok),
                         contract_problems=contract_problems(ok, contracts) if not contracts.empty else {},
                         parallel_jobs=[r.cell.job_num for r in parallel_cells(records)],
                         judge_noise=judge_noise(ok))
