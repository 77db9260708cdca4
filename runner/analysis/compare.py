"""Two saved sweeps of one model, cell by cell: `python -m runner.replay compare A B [--out DIR]`.

Cells are matched by build (format × precision, a prebuilt one by its artifact's name), never by the
settings that differ between the sweeps: those are what is being compared, so they are listed instead
(from each job's saved `.hydra/config.yaml`, else its overrides, plus tool versions, device and host).
Several cells of one build in a sweep are told apart by the settings that vary among them.

For each pair of ok cells, every value is B − A:
  d_<m> (+ _lo _hi _p _sig _mdd _n)  per-answer metrics paired by (prompt id, repeat) on the answers whose
                                    prompt text is the same on both sides: bootstrap-t CI over prompts, its p,
                                    `_sig` (the CI excludes 0); `same_<m>`: both sides are the same cached
                                    measurement (same store entries), so no delta is computed
  agreement_pct, similarity_pct    identical token ids (share of answers) and token similarity, A vs B
  d_kld_mean (+ _lo _hi), d_top1_pct  fidelity, each side vs its own sweep's baseline, not paired per prompt
  d_size_gb, d_bits_per_weight     plain differences (deterministic)
Speed deltas are left empty unless both cells ran on the same host fingerprint and engine device.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from scipy import stats as sps

from runner.identity import answer_key, parse_override, precision_label
from runner.judges.rubric import CRITERIA
from runner.analysis.matrix_stats import (MIN_CHUNKS_FOR_CI, WHOLE_OUTCOME, DELTA_SUFFIXES, DELTAS, LEVEL, N_BOOT, SPEED, by_prompt, delta_columns,
                                          speed_tag)
from runner.metrics.fidelity import answer_agreement
from runner.metrics.paired import paired_prompt_delta
from runner.metrics.stats import MIN_PROMPTS_FOR_CI, cluster_mean_ci
from runner.records import CellRecord, FidelityResult, PromptResult
from runner.analysis.report_format import NOT_DISTINCT, fmt, signed
from runner.analysis.report_render import Section, render_html, render_markdown
from runner.secrets import secret_in
from runner.sweep import Job, Sweep

RUN_KEYS = ("outputs_root", "store_dir", "store_lock", "store_lease_s", "quiet")  # where, not what: never a difference
NOT_CONFIG = ("versions.", "runtime.", "host")  # settings() adds these from the record
SAME = "same measurement (cache)"  # what a delta between one cached measurement and itself is shown as


class CompareError(ValueError):
    """Two sweeps that cannot be compared (e.g. of different models); the message names both."""


@dataclass
class Cell:
    """One job of one sweep, as the comparison sees it."""

    key: tuple[str, str, str]  # (model key, format, precision label): what matches across sweeps
    build: str  # "gguf q4_0" (with the model when a sweep holds several)
    job: int | None
    status: str
    reason: str | None
    record: CellRecord | None
    settings: dict[str, str] = field(default_factory=dict)  # flat config key → value, plus versions/device/host


@dataclass
class Pair:
    build: str
    a: Cell
    b: Cell
    differs: dict[str, tuple[str | None, str | None]]  # setting → (A value, B value)
    row: dict[str, Any]  # its compare.csv row
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    a: Path
    b: Path
    model: str
    pairs: list[Pair]
    only_a: list[Cell]
    only_b: list[Cell]
    notes: list[str]  # loud caveats (hardware, fidelity baselines, prompts, power)

    @property
    def table(self) -> pd.DataFrame:
        """compare.csv: one row per matched build, each `d_<m>_sig` beside its `d_<m>_p`."""
        df = pd.DataFrame([p.row for p in self.pairs])
        cols = [c for c in df.columns if not c.endswith("_sig")]
        for c in [c for c in cols if c.endswith("_p") and f"{c[:-2]}_sig" in df]:
            cols.insert(cols.index(c) + 1, f"{c[:-2]}_sig")
        return df[cols]

    def differs(self) -> dict[str, tuple[set[str], set[str], int]]:
        """Every setting that differs in some pair: (A values, B values, pairs it differs in)."""
        out: dict[str, tuple[set[str], set[str], int]] = {}
        for p in self.pairs:
            for k, (va, vb) in p.differs.items():
                sa, sb, n = out.get(k, (set(), set(), 0))
                out[k] = (sa | {_show(va)}, sb | {_show(vb)}, n + 1)
        return dict(sorted(out.items()))


# ------------------------------------------------------------------ which model, which cells


def _model_hashes(sweep: Sweep) -> dict[str, str | None]:
    """Model name → its source's content hash (a GGUF file's sha, a hub commit; None: no record says)."""
    out: dict[str, str | None] = {}
    for r in sweep.records:
        if out.get(r.cell.model) is None:
            out[r.cell.model] = r.source.content_hash if r.source else None
    return out


def _short(h: str | None) -> str:
    return "content unknown" if h is None else f"content {h if len(h) <= 24 else h[:20] + '…'}"


def model_keys(a: Sweep, b: Sweep) -> tuple[dict[str, str], dict[str, str]]:
    """Model name → the key cells match on, per sweep; CompareError unless both sweeps are of the same model(s).

    The key is the source's content hash when every model of both sweeps has one, else the model's name
    (then a name whose hashes are known on both sides must have the same hash).
    """
    ha, hb = _model_hashes(a), _model_hashes(b)
    for sweep, h in ((a, ha), (b, hb)):
        if not h:
            raise CompareError(f"{sweep.dir}: no cell record to compare (no job finished)")
    by_hash = all(ha.values()) and all(hb.values())
    ka = {n: str(h) if by_hash else n for n, h in ha.items()}
    kb = {n: str(h) if by_hash else n for n, h in hb.items()}
    clash = any(ha[n] and hb[n] and ha[n] != hb[n] for n in set(ha) & set(hb))
    if clash or set(ka.values()) != set(kb.values()):
        def say(h: dict[str, str | None]) -> str:
            return ", ".join(f"{n} ({_short(c)})" for n, c in sorted(h.items()))
        raise CompareError(f"not the same model: A ({a.dir}) is of model {say(ha)}, B ({b.dir}) of model {say(hb)}; "
                           "compare two sweeps of one model")
    return ka, kb


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return {prefix.rstrip("."): text}


def settings(job: Job, rec: CellRecord | None) -> dict[str, str]:
    """What the cell ran with: its saved config (unresolved: secrets stay `${oc.env:...}`), else its identity and
    overrides; plus tool versions, engine device/dtype and host. Run-location keys are left out."""
    config = job.hydra_dir / "config.yaml"
    if config.is_file():
        out = _flat(OmegaConf.to_container(OmegaConf.load(config), resolve=False))
    elif rec is not None:
        c = rec.cell
        out = {g: getattr(c, g) for g in ("model", "format", "precision", "generation", "prompts", "judge")}
        out.update({k: str(v) for k, v in map(parse_override, c.overrides) if not k.startswith("hydra.")})
    else:
        out = {}
    out = {k: v for k, v in out.items() if k.split(".")[0] not in RUN_KEYS}
    if rec is not None:
        out.update({f"versions.{k}": str(v) for k, v in rec.versions.items()})
        if rec.runtime:
            out.update({"runtime.device": rec.runtime.device, "runtime.compute_dtype": rec.runtime.compute_dtype})
        if rec.host:
            out["host"] = rec.host.hardware
    return {k: "<redacted>" if secret_in(f"{k}={v}") else v for k, v in out.items()}


def cells(sweep: Sweep, model_key: dict[str, str]) -> list[Cell]:
    """Every job of the sweep that says which build it is (a job without record or config cannot)."""
    out = []
    for job in sweep.jobs:
        rec, s = job.record, settings(job, job.record)
        if rec is not None:
            model, fmt_, precision, artifact = rec.cell.model, rec.cell.format, rec.cell.precision, rec.cell.artifact
            method = rec.cell.method
            status, reason = rec.status, rec.reason
        elif "format.name" in s and "precision.name" in s:
            model, fmt_, precision = s.get("model.name", ""), s["format.name"], s["precision.name"]
            artifact = s.get("artifact.path") if precision == "prebuilt" else None
            method = s.get("method.name", "none")
            status, reason = "failed", job.problem
        else:
            continue
        label = precision_label(precision, artifact if artifact not in (None, "null") else None, method)
        key = (model_key.get(model, model), fmt_, label)
        build = f"{fmt_} {label}" if len(set(model_key.values())) < 2 else f"{model} {fmt_} {label}"
        out.append(Cell(key, build, job.num, status, reason, rec, s))
    return out


def _varying(group: list[Cell]) -> set[str]:
    keys = {k for c in group for k in c.settings if not k.startswith(NOT_CONFIG)}
    return {k for k in keys if len({c.settings.get(k) for c in group}) > 1}


def match(cells_a: list[Cell], cells_b: list[Cell]) -> tuple[list[tuple[Cell, Cell]], list[Cell], list[Cell]]:
    """(pairs, only in A, only in B). A build that occurs several times in a sweep is split by the settings that
    vary among its cells there; those must agree to pair (and name the cells in labels)."""
    groups: dict[tuple[str, str, str], tuple[list[Cell], list[Cell]]] = defaultdict(lambda: ([], []))
    for side, cs in ((0, cells_a), (1, cells_b)):
        for c in cs:
            groups[c.key][side].append(c)
    pairs, only_a, only_b = [], [], []
    for ga, gb in groups.values():
        varying = sorted({k for g in (ga, gb) if len(g) > 1 for k in _varying(g)})
        if varying:
            named = [k for k in varying if k.endswith(".name")] or varying
            for c in ga + gb:
                c.build += " (" + ", ".join(f"{k.removesuffix('.name')}={_show(c.settings.get(k), 30)}"
                                            for k in named) + ")"
        left = list(gb)
        for ca in ga:
            twin = next((cb for cb in left if all(cb.settings.get(k) == ca.settings.get(k) for k in varying)), None)
            if twin is None:
                only_a.append(ca)
            else:
                left.remove(twin)
                pairs.append((ca, twin))
        only_b += left
    return pairs, only_a, only_b


# ------------------------------------------------------------------ the deltas of one pair


def paired_results(a: CellRecord, b: CellRecord) -> tuple[list[tuple[PromptResult, PromptResult]], int, int]:
    """Answers of A and B with the same (prompt id, repeat) and prompt text, by key; and how many of A's and B's
    answers have no such counterpart."""
    by_b = {answer_key(r): r for r in b.results}
    pairs = [(r, by_b[answer_key(r)]) for r in a.results
             if answer_key(r) in by_b and by_b[answer_key(r)].prompt_text == r.prompt_text]
    pairs.sort(key=lambda p: answer_key(p[0]))
    return pairs, len(a.results) - len(pairs), len(b.results) - len(pairs)


def fidelity_delta(fa: FidelityResult | None, fb: FidelityResult | None, level: float = LEVEL) -> dict[str, float]:
    """d_kld_mean (B − A) with a CI ±t·√(se_A² + se_B²) (Welch's degrees of freedom from the two chunk counts;
    none when either SE is missing or from fewer than MIN_CHUNKS_FOR_CI chunks), d_top1_pct (no CI). Not paired
    per prompt. Both sides the same cached score: `same_kld_mean`, no delta."""
    empty = {"d_kld_mean": math.nan, "d_kld_mean_lo": math.nan, "d_kld_mean_hi": math.nan, "d_top1_pct": math.nan}
    if fa is None or fb is None:
        return empty
    if fa.key and fa.key == fb.key:  # one cached score, read twice
        return {**empty, "same_kld_mean": True, "same_top1_pct": True}
    if fa.protocol != fb.protocol:  # different measurements (fidelity.protocol): no delta
        return empty
    d = fb.kld_mean - fa.kld_mean
    se = math.sqrt(fa.kld_se ** 2 + fb.kld_se ** 2)
    enough = min(fa.n_chunks, fb.n_chunks) >= MIN_CHUNKS_FOR_CI and math.isfinite(se)
    # Welch-Satterthwaite degrees of freedom of the two chunk-mean SEs
    df = (se ** 4 / (fa.kld_se ** 4 / (fa.n_chunks - 1) + fb.kld_se ** 4 / (fb.n_chunks - 1))
          if enough and se > 0 else math.inf)
    t = sps.t.ppf((1 + level) / 2, df) if enough else math.nan
    return {"d_kld_mean": d, "d_kld_mean_lo": d - t * se if enough else math.nan,
            "d_kld_mean_hi": d + t * se if enough else math.nan, "d_top1_pct": fb.top1_pct - fa.top1_pct}


def _size(rec: CellRecord) -> tuple[float, float]:
    art = rec.artifact
    if art is None:
        return math.nan, math.nan
    return art.size_bytes / 1e9, art.bits_per_weight if art.bits_per_weight is not None else math.nan


def _has(results: list[PromptResult], name: str) -> bool:
    return any(not math.isnan(DELTAS[name](r)) for r in results)


def pair_row(build: str, ca: Cell, cb: Cell, n_boot: int = N_BOOT, level: float = LEVEL) -> tuple[dict[str, Any],
                                                                                                    list[str]]:
    """The compare.csv row of a matched pair and its caveats; deltas only when both cells are ok."""
    row: dict[str, Any] = {"build": build, "status_a": ca.status, "status_b": cb.status, "job_a": ca.job,
                           "job_b": cb.job, "reason_a": ca.reason, "reason_b": cb.reason}
    a, b = ca.record, cb.record
    if a is None or b is None or ca.status != "ok" or cb.status != "ok":
        return row, []
    notes = []
    pairs, left_a, left_b = paired_results(a, b)
    ra, rb = [p[0] for p in pairs], [p[1] for p in pairs]
    row.update({"paired": len(pairs), "unpaired_a": left_a, "unpaired_b": left_b})
    if left_a or left_b:
        notes.append(f"{build}: {len(pairs)} answers paired, {left_a} of A's and {left_b} of B's have no counterpart "
                     "(same prompt id, repeat and prompt text) and are left out of every per-answer figure.")
    agree = [(p[0].prompt_id, answer_agreement(p[0].generation.token_ids, p[1].generation.token_ids)) for p in pairs]
    for col, what in (("agreement_pct", "exact"), ("similarity_pct", "token_similarity")):
        values: dict[str, list[float]] = defaultdict(list)
        for pid, x in agree:
            values[pid].append(100.0 * x[what])
        row[col], row[f"{col}_lo"], row[f"{col}_hi"] = cluster_mean_ci(list(values.values()), n_boot, level)
    row["agreement_n"] = len({pid for pid, _ in agree})
    tag_a, tag_b = speed_tag(a), speed_tag(b)
    row["speed_compared"] = same_hardware = tag_a is not None and tag_a == tag_b
    same_answers = bool(pairs) and all(x.generation_key == y.generation_key for x, y in pairs)
    same_verdicts = same_answers and all([j.key for j in x.judgments] == [j.key for j in y.judgments]
                                         for x, y in pairs)
    for name, get in DELTAS.items():
        if name in CRITERIA + ("check_pass",) and not (_has(ra, name) and _has(rb, name)):
            continue  # not judged / not checked on both sides
        if same_verdicts if name in CRITERIA else same_answers:  # the same store entries on both sides
            row.update({f"d_{name}{s}": math.nan for s in DELTA_SUFFIXES if s != "_n"}
                       | {f"d_{name}_n": 0, f"same_{name}": True})
            continue
        if name in SPEED and not same_hardware:
            row.update({f"d_{name}{s}": math.nan for s in DELTA_SUFFIXES if s != "_n"} | {f"d_{name}_n": 0})
            continue
        d = paired_prompt_delta(by_prompt(ra, get, name, tag_a), by_prompt(rb, get, name, tag_b),
                                WHOLE_OUTCOME.get(name), n_boot, level)
        row.update(delta_columns(name, d))
    if parallel := [side for side, rec in (("A", a), ("B", b)) if rec.speed and rec.speed.parallel_jobs > 1]:
        notes.append(f"{build}: speed in {' and '.join(parallel)} was measured while other cells ran on the same host "
                     "(a parallel launcher): its speed Δ is not a fair comparison.")
    row.update(fidelity_delta(a.fidelity, b.fidelity, level))
    if a.fidelity and b.fidelity:
        fa, fb = a.fidelity, b.fidelity
        if fa.baseline != fb.baseline:
            notes.append(f"{build}: fidelity is against {fa.baseline} in A, {fb.baseline} in B.")
        if fa.protocol != fb.protocol:
            notes.append(f"⚠️ {build}: fidelity was measured under protocol {fa.protocol} in A and {fb.protocol} in B "
                         "(fidelity.protocol): different measurements, so no KLD or top-1 Δ is given.")
        if (fa.text_sha, fa.n_tokens) != (fb.text_sha, fb.n_tokens):
            notes.append(f"{build}: fidelity was evaluated on different text ({fa.n_tokens} tokens in A, {fb.n_tokens} "
                         "in B): its Δ mixes the text with the build.")
    (sa, ba), (sb, bb) = _size(a), _size(b)
    row.update({"d_size_gb": sb - sa, "d_bits_per_weight": bb - ba})
    return row, notes


def _where(rec: CellRecord) -> str:
    if rec.host is None or rec.runtime is None:
        return "unknown hardware (a record without host tags)"
    return f"{rec.host.hardware}, {rec.runtime.device} ({speed_tag(rec)})"


def _show(value: str | None, width: int = 60) -> str:
    text = "(not set)" if value is None else value
    return text if len(text) <= width else text[:width - 1] + "…"


def compare(a: Sweep, b: Sweep, n_boot: int = N_BOOT, level: float = LEVEL) -> Comparison:
    """Match the cells of two sweeps of one model and compute every B − A delta (CompareError: other models)."""
    ka, kb = model_keys(a, b)
    pairs_, only_a, only_b = match(cells(a, ka), cells(b, kb))
    pairs = []
    for ca, cb in pairs_:
        keys = sorted(set(ca.settings) | set(cb.settings))
        differs = {k: (ca.settings.get(k), cb.settings.get(k)) for k in keys  # a key one side lacks reads as null
                   if ca.settings.get(k, "null") != cb.settings.get(k, "null")}
        row, notes = pair_row(ca.build, ca, cb, n_boot, level)
        said = "; ".join(f"{k}: {_show(va)} → {_show(vb)}" for k, (va, vb) in differs.items())
        row = {**dict(list(row.items())[:7]), "differs": said, **row}  # after build, statuses, jobs, reasons
        pairs.append(Pair(ca.build, ca, cb, differs, row, notes))
    notes = []
    hardware = {(_where(p.a.record), _where(p.b.record)) for p in pairs
                if p.a.record and p.b.record and p.row.get("speed_compared") is False}
    unknown = any("unknown hardware" in x for pair in hardware for x in pair)
    if hardware:
        where = "; ".join(f"A on {wa}, B on {wb}" for wa, wb in sorted(hardware))
        notes.append(f"⚠️ **{'SPEED NOT COMPARABLE' if unknown else 'HARDWARE MISMATCH'}**: {where}. Speed is compared "
                     "only between cells measured on the same hardware (host fingerprint) and engine device; the speed "
                     "deltas of these builds are left empty.")
    if any(p.row.get("paired") == 0 for p in pairs):
        notes.append("⚠️ **NO ANSWERS PAIRED** for some builds: the two sweeps share no prompt (same id, repeat and "
                     "prompt text), so no per-answer delta and no answer agreement could be computed.")
    if any(j.winner is not None for sweep in (a, b) for r in sweep.records for pr in r.results for j in pr.judgments):
        notes.append("Pairwise verdicts (judge.mode=pairwise) are not compared: each sweep's are against its own "
                     "baseline's answers, so B − A of two win rates has no common reference. Read each sweep's report.")
    models = sorted({r.cell.model for r in a.records})
    return Comparison(a.dir, b.dir, ", ".join(models), pairs, only_a, only_b, notes)


# ------------------------------------------------------------------ pages and terminal


def delta_text(row: dict[str, Any] | pd.Series, metric: str) -> str:
    """'Δ [lo, hi]' with ≈ when the CI includes 0; 'Δ' alone without a CI; '–' when there is none; SAME when both
    sides are one cached measurement."""
    if row.get(f"same_{metric}") is True:
        return SAME
    d = row.get(f"d_{metric}")
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "–"
    lo, hi = row.get(f"d_{metric}_lo"), row.get(f"d_{metric}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return signed(d)
    mark = f" {NOT_DISTINCT}" if lo <= 0 <= hi else ""
    sig = " *" if row.get(f"d_{metric}_sig") is True else ""
    return f"{signed(d)} [{signed(lo)}, {signed(hi)}]{mark}{sig}"


def _pct(row: dict[str, Any], col: str) -> str:
    v, lo, hi = row.get(col), row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if v is None or math.isnan(v):
        return "–"
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and not math.isnan(lo) else ""
    return f"{fmt(v)}{ci}"


def _present(cmp: Comparison, metric: str) -> bool:
    return any(f"d_{metric}" in p.row for p in cmp.pairs)


def headline(cmp: Comparison, full: bool = True) -> pd.DataFrame:
    """One line per matched build with the main deltas (B − A); `full=False`: the terminal's shorter table."""
    quality = [m for m in ("overall", "check_pass") if _present(cmp, m)]
    extra = [m for m in CRITERIA[1:] if full and _present(cmp, m)]
    rows = []
    for p in cmp.pairs:
        r = p.row
        line = {"Build": p.build, "A → B": f"{p.a.status} → {p.b.status}"}
        if p.a.status == p.b.status == "ok":
            line["Answers paired"] = f"{r.get('paired')}" + (f" (+{r['unpaired_a']}/{r['unpaired_b']} unpaired)"
                                                              if r.get("unpaired_a") or r.get("unpaired_b") else "")
            line["Same answers %"] = _pct(r, "agreement_pct")
            line.update({f"Δ {m}": delta_text(r, m) for m in quality + extra})
            line.update({"Δ KLD": delta_text(r, "kld_mean"), "Δ top-1 %": delta_text(r, "top1_pct")})
            if full:
                line.update({"Δ size GB": delta_text(r, "size_gb"), "Δ bits/weight": delta_text(r, "bits_per_weight")})
            line.update({"Δ gen tok/s": delta_text(r, "gen_tps")})
            if full:
                line["Δ s/prompt"] = delta_text(r, "s_per_prompt")
        rows.append(line)
    return pd.DataFrame(rows).fillna("")


def sections(cmp: Comparison) -> list[Section]:
    n_ok = sum(p.a.status == p.b.status == "ok" for p in cmp.pairs)
    out = [Section("Sweeps", [
        f"A: `{cmp.a}`", f"B: `{cmp.b}`",
        f"Model: {cmp.model}. {len(cmp.pairs)} builds in both ({n_ok} ok on both sides and compared), "
        f"{len(cmp.only_a)} only in A, {len(cmp.only_b)} only in B. Cells are matched by build (format × precision, "
        "a prebuilt one by its file), not by the settings that differ: those are listed below."])]
    diff = cmp.differs()
    if diff:
        table = pd.DataFrame([{"Setting": k, "A": ", ".join(sorted(va)), "B": ", ".join(sorted(vb)),
                               "Builds": f"{n}/{len(cmp.pairs)}"} for k, (va, vb, n) in diff.items()])
        out.append(Section("What differs", ["Every setting that differs between matched cells (saved configs, tool "
                                            "versions, device, host); run locations are left out."], table))
    else:
        out.append(Section("What differs", ["Nothing: the matched cells ran with the same settings, tool versions, "
                                            "device and host."]))
    text = [f"Every Δ is B − A. {NOT_DISTINCT}: the {LEVEL:.0%} CI includes 0; *: it excludes 0 (per comparison). "
            f"“{SAME}”: both sides read the same store entries (answers, verdicts or fidelity scores), so there is "
            "nothing to compare. Same answers: share of paired answers with identical token ids (100: the outputs "
            "did not change).", *cmp.notes]
    out.append(Section("Deltas (B − A)", text, headline(cmp) if cmp.pairs else None))
    per_build = [{"Build": p.build, "Differs": p.row["differs"]} for p in cmp.pairs if p.row["differs"]]
    if per_build and any(p.row["differs"] != cmp.pairs[0].row["differs"] for p in cmp.pairs):
        out.append(Section("Settings that differ, per build", [], pd.DataFrame(per_build)))
    pair_notes = [n for p in cmp.pairs for n in p.notes]
    out.append(Section("Fidelity and speed", [
        "KLD and top-1 are each side's distance from its own sweep's baseline cell, **not paired per prompt**: Δ is "
        f"B − A with a CI ±t·√(se_A² + se_B²) from the per-chunk SEs (Welch's degrees of freedom; none below "
        f"{MIN_CHUNKS_FOR_CI} chunks); top-1 has no CI. Size and bits/weight are plain differences (deterministic).",
        "Speed (gen tok/s, s/prompt) is paired per answer like the quality metrics, only when both cells ran on the "
        "same hardware (host fingerprint) and engine device.", *pair_notes]))
    bad = [p for p in cmp.pairs if not p.a.status == p.b.status == "ok"]
    if bad:
        out.append(Section("Not compared (not ok on a side)", [], pd.DataFrame(
            [{"Build": p.build, "A": p.a.status, "A reason": p.a.reason or "", "B": p.b.status,
              "B reason": p.b.reason or ""} for p in bad])))
    for title, only in (("Only in A", cmp.only_a), ("Only in B", cmp.only_b)):
        out.append(Section(title, [] if only else ["None."], pd.DataFrame(
            [{"Build": c.build, "Job": c.job, "Status": c.status, "Reason": c.reason or ""} for c in only])
            if only else None))
    out.append(Section("Statistics", [
        f"Per-answer metrics (judge criteria, check pass rate, gen tok/s, s/prompt) are paired by (prompt id, repeat) "
        f"on answers with the same prompt text; the unit is the prompt: {LEVEL:.0%} studentized bootstrap over prompts "
        f"({N_BOOT} seeded resamples, none below {MIN_PROMPTS_FOR_CI} prompts), its p-value from the same resamples. "
        "compare.csv holds every Δ as `d_<metric>` with `_lo`, `_hi`, `_p`, `_sig` (the CI excludes 0), `_mdd` "
        "(detection limit) and `_n` (prompts), `same_<metric>` where both sides are one cached measurement, and "
        "`differs` per build."]))
    return out


def write(cmp: Comparison, out: Path) -> list[Path]:
    """compare.csv, compare.md and compare.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    title = f"Sweep comparison: {cmp.a.name} (A) vs {cmp.b.name} (B)"
    secs = sections(cmp)
    paths = [out / "compare.csv", out / "compare.md", out / "compare.html"]
    cmp.table.to_csv(paths[0], index=False)
    paths[1].write_text(render_markdown(secs, title))
    paths[2].write_text(render_html(secs, title))
    return paths


def run(a: Sweep, b: Sweep, out: Path | None = None) -> int:
    """The `compare` verb: compare, write, print the short table and the paths. 0: written (differences are
    findings); CompareError / SweepError propagate (exit 2 in runner.replay)."""
    cmp = compare(a, b)
    paths = write(cmp, Path(out) if out else b.dir)
    print(f"Comparison of {a.dir} (A) and {b.dir} (B): {len(cmp.pairs)} builds in both, {len(cmp.only_a)} only in A, "
          f"{len(cmp.only_b)} only in B")
    if cmp.pairs:
        print(headline(cmp, full=False).to_markdown(index=False, disable_numparse=True))
    for title, only in (("only in A", cmp.only_a), ("only in B", cmp.only_b)):
        if only:
            print(f"{title}: " + ", ".join(f"{c.build} ({c.status})" for c in only))
    if diff := cmp.differs():
        print("differs: " + "; ".join(f"{k}: {', '.join(sorted(va))} → {', '.join(sorted(vb))}"
                                      for k, (va, vb, _) in list(diff.items())[:8])
              + (f"; … {len(diff) - 8} more" if len(diff) > 8 else ""))
    for note in cmp.notes:
        print(note.replace("**", ""))
    print(f"B − A; {NOT_DISTINCT}: the CI includes 0; *: it excludes 0; {SAME}: both sides read one store entry. "
          "Written: "
          + ", ".join(map(str, paths)))
    return 0
