"""The report's answer view: per prompt, the baseline's answer and every build's side by side, word
differences against the baseline marked, judge scores and reasoning, check outcomes, truncation. Filters
(category, build, differs from the baseline, failed checks / low scores) and sortable tables run in inline
JavaScript, so report.html works offline from the file alone. Built from the samples table (samples.py).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

import jinja2
import markupsafe
import pandas as pd

from runner.judges.rubric import CRITERIA

LOW_SCORE = 5  # default of the "low scores" filter: judge overall at or below this
_WORDS = re.compile(r"\s+|\w+|[^\w\s]")


def word_diff(baseline: str, answer: str) -> markupsafe.Markup:
    """`answer` with the words it adds to `baseline` in <ins> and those it drops in <del>; all text escaped."""
    a, b = _WORDS.findall(baseline), _WORDS.findall(answer)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            out.append(markupsafe.Markup("<del>{}</del>").format("".join(a[i1:i2])))
        if op in ("insert", "replace"):
            out.append(markupsafe.Markup("<ins>{}</ins>").format("".join(b[j1:j2])))
        if op == "equal":
            out.append(markupsafe.escape("".join(b[j1:j2])))
    return markupsafe.Markup("").join(out)


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _differs(s: pd.Series) -> bool | None:
    """Whether the answer differs from its baseline answer (token ids when recorded, else text)."""
    if s["is_baseline"]:
        return False
    if isinstance(s["same_as_baseline"], bool):
        return not s["same_as_baseline"]
    return None if not isinstance(s["baseline_answer"], str) else s["answer"] != s["baseline_answer"]


def _row(s: pd.Series) -> dict[str, Any]:
    base = s["baseline_answer"] if isinstance(s["baseline_answer"], str) else None
    differs = _differs(s)
    scores = {c: _num(s[c]) for c in CRITERIA}
    check = s["check_passed"] if isinstance(s["check_passed"], bool) else None
    return {
        "build": s["build"], "repeat": int(s["repeat"]), "baseline": bool(s["is_baseline"]),
        "answer": word_diff(base, s["answer"]) if base is not None and differs else s["answer"],
        "differs": differs, "truncated": bool(s["truncated"]), "finish": s["finish_reason"],
        "tokens": int(s["completion_tokens"]), "thinking": int(s["thinking_tokens"]), "scores": scores, "overall": scores["overall"],
        "judged": s["judged"] if isinstance(s["judged"], str) else None,
        "reasoning": s["judge_reasoning"] if isinstance(s["judge_reasoning"], str) else None,
        "judge_error": s["judge_error"] if isinstance(s["judge_error"], str) else None,
        "pairwise": s["pairwise_outcome"] if isinstance(s["pairwise_outcome"], str) else None,
        "pairwise_reasoning": s["pairwise_reasoning"] if isinstance(s["pairwise_reasoning"], str) else None,
        "check": check, "check_detail": s["check_detail"] if isinstance(s["check_detail"], str) else None,
        "similarity": _num(s["similarity_to_baseline"]),
    }


def answer_view(samples: pd.DataFrame) -> markupsafe.Markup:
    """The answers section of report.html (empty when the sweep has no answers)."""
    if samples.empty:
        return markupsafe.Markup("")
    prompts = []
    order = samples.assign(_base=~samples["is_baseline"].astype(bool))  # the baseline's rows first
    for pid, group in order.sort_values(["prompt_id", "_base", "job", "repeat"]).groupby("prompt_id", sort=True):
        first = group.iloc[0]
        prompts.append({"id": pid, "category": first["category"], "prompt": first["prompt"],
                        "reference": first["reference"] if isinstance(first["reference"], str) else None,
                        "rows": [_row(s) for _, s in group.iterrows()]})
    builds = list(dict.fromkeys(samples.sort_values("job")["build"]))
    return markupsafe.Markup(VIEW.render(
        prompts=prompts, builds=builds, categories=sorted(samples["category"].unique()), low=LOW_SCORE,
        criteria=CRITERIA, judged=samples["overall"].notna().any(), checked=samples["check_passed"].notna().any(),
        paired=samples["pairwise_outcome"].notna().any(), n_answers=len(samples)))


def fmt_score(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


_ENV = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["score"] = fmt_score
VIEW = _ENV.from_string("""
<h2 id="answers">Answers</h2>
<p>Every answer ({{ n_answers }}), per prompt, beside the baseline's: words a build adds are
<ins>marked</ins>, words it drops <del>struck</del>; ✂ marks an answer cut at <code>max_tokens</code>.
The same rows are in <code>samples.csv</code> / <code>samples.jsonl</code>. Click a column title to sort.</p>
<div class="av-controls">
<label>Category <select id="av-category"><option value="">all</option>
{% for c in categories %}<option value="{{ c }}">{{ c }}</option>{% endfor %}</select></label>
<label>Build <select id="av-build"><option value="">all</option>
{% for b in builds %}<option value="{{ b }}">{{ b }}</option>{% endfor %}</select></label>
<label><input type="checkbox" id="av-differs"> only where the answer differs from the baseline</label>
<label><input type="checkbox" id="av-problems"> only failed checks / low scores
(judge overall ≤ <input type="number" id="av-low" value="{{ low }}" min="0" max="10" step="1">, a pairwise loss)</label>
<span id="av-count"></span>
</div>
{% for p in prompts %}
<div class="av-prompt" data-category="{{ p.category }}">
<h3>{{ p.id }} <span class="av-cat">{{ p.category }}</span></h3>
<details><summary>prompt{% if p.reference %} and reference answer{% endif %}</summary>
<pre class="av-text">{{ p.prompt }}</pre>
{% if p.reference %}<p>Reference:</p><pre class="av-text">{{ p.reference }}</pre>{% endif %}
</details>
<table class="sortable av-table"><thead><tr><th>Build</th><th>Repeat</th><th>Answer</th><th>Tokens</th>
{% if judged %}<th>Judge overall</th>{% endif %}{% if paired %}<th>Pairwise</th>{% endif %}
{% if checked %}<th>Check</th>{% endif %}<th>Same as baseline</th></tr></thead><tbody>
{% for r in p.rows %}
<tr class="av-row{% if r.baseline %} av-baseline{% endif %}" data-build="{{ r.build }}" data-repeat="{{ r.repeat }}"
 data-baseline="{{ 1 if r.baseline else 0 }}" data-differs="{{ 1 if r.differs else 0 }}"
 data-overall="{{ r.overall | score }}" data-check="{{ '' if r.check is none else (1 if r.check else 0) }}"
 data-pairwise="{{ r.pairwise or '' }}">
<td>{{ r.build }}{% if r.baseline %} <em>(baseline)</em>{% endif %}</td>
<td data-sort="{{ r.repeat }}">{{ r.repeat }}</td>
<td class="av-answer"><div class="av-text">{{ r.answer }}{% if not r.answer %}<span class="av-small">(empty answer{% if r.thinking %}: {{ r.thinking }} thinking tokens, stripped{% endif %})</span>{% endif %}{% if r.truncated %}<span class="av-cut" title="cut at max_tokens (finish_reason={{ r.finish }})"> ✂ truncated</span>{% endif %}</div></td>
<td data-sort="{{ r.tokens }}">{{ r.tokens }}</td>
{% if judged %}<td data-sort="{{ r.overall | score }}">{{ r.overall | score }}
{% if r.overall is not none %}<div class="av-small">{% for c in criteria[1:] %}{{ c }} {{ r.scores[c] | score }}{% if not loop.last %} · {% endif %}{% endfor %} ({{ r.judged }})</div>{% endif %}
{% if r.judge_error %}<div class="av-error">judge failed: {{ r.judge_error }}</div>{% endif %}
{% if r.reasoning %}<details><summary>reasoning</summary><div class="av-text">{{ r.reasoning }}</div></details>{% endif %}</td>{% endif %}
{% if paired %}<td>{{ r.pairwise or '' }}{% if r.pairwise_reasoning %}<details><summary>reasoning</summary><div class="av-text">{{ r.pairwise_reasoning }}</div></details>{% endif %}</td>{% endif %}
{% if checked %}<td data-sort="{{ '' if r.check is none else (1 if r.check else 0) }}">{% if r.check is none %}{% elif r.check %}✓{% else %}✗{% endif %}
{% if r.check_detail %}<div class="av-small">{{ r.check_detail }}</div>{% endif %}</td>{% endif %}
<td data-sort="{{ '' if r.similarity is none else r.similarity }}">{% if r.baseline %}—{% elif r.differs is none %}no baseline answer{% elif r.differs %}no{% if r.similarity is not none %} ({{ '%.2f' % r.similarity }} similar){% endif %}{% else %}yes{% endif %}</td>
</tr>
{% endfor %}
</tbody></table></div>
{% endfor %}
""")

# Inline CSS and JS of report.html (no CDN: the file works offline).
STYLE = """
ins { background: #d4f7d4; text-decoration: none; }
del { background: #f9d0d0; }
.av-controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #ccc; z-index: 1; }
.av-controls label { margin-right: 1.2em; }
.av-cat { font-size: 0.7em; color: #666; font-weight: normal; }
.av-text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 0.95em; margin: 0; }
.av-answer { max-width: 60em; }
.av-baseline { background: #f7f7ff; }
.av-small { font-size: 0.85em; color: #555; }
.av-cut { color: #b00; font-weight: bold; }
.av-error { color: #b00; }
.hidden { display: none; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
table.sortable th { cursor: pointer; }
"""

SCRIPT = """
(function () {
  function sortValue(td) {
    var raw = td.hasAttribute('data-sort') ? td.getAttribute('data-sort') : td.textContent;
    var m = raw.replace(/\\u2212/g, '-').match(/^[\\s≈~<>±]*([-+]?\\d*\\.?\\d+(?:e[-+]?\\d+)?)/i);
    return m ? parseFloat(m[1]) : (raw.trim() === '' ? null : raw.trim().toLowerCase());
  }
  function compare(a, b) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === 'number' ? -1 : 1;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.addEventListener('click', function () {
        var desc = th.classList.contains('sorted-asc');
        table.querySelectorAll('thead th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
        th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var c = compare(sortValue(a.cells[col]), sortValue(b.cells[col]));
          return desc ? -c : c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var controls = ['av-category', 'av-build', 'av-differs', 'av-problems', 'av-low'].map(function (id) {
    return document.getElementById(id);
  });
  if (!controls[0]) return;
  function problem(row, low) {
    var overall = row.dataset.overall, check = row.dataset.check;
    return check === '0' || (overall !== '' && parseFloat(overall) <= low) || row.dataset.pairwise.indexOf('loss') >= 0;
  }
  function apply() {
    var cat = controls[0].value, build = controls[1].value, differs = controls[2].checked;
    var problems = controls[3].checked, low = parseFloat(controls[4].value);
    var prompts = 0, answers = 0;
    document.querySelectorAll('.av-prompt').forEach(function (block) {
      var rows = block.querySelectorAll('tr.av-row'), shown = {}, any = false;
      rows.forEach(function (row) {
        var ok = (!cat || block.dataset.category === cat) && (!build || row.dataset.build === build) &&
          (!differs || row.dataset.differs === '1') && (!problems || problem(row, low));
        row.classList.toggle('hidden', !ok);
        if (ok) { any = true; answers++; shown[row.dataset.repeat] = true; }
      });
      rows.forEach(function (row) {  // the baseline's answer stays beside what is shown, for reference
        if (row.dataset.baseline === '1' && shown[row.dataset.repeat]) row.classList.remove('hidden');
      });
      block.classList.toggle('hidden', !any);
      if (any) prompts++;
    });
    document.getElementById('av-count').textContent = prompts + ' prompts, ' + answers + ' answers shown';
  }
  controls.forEach(function (c) { c.addEventListener('change', apply); c.addEventListener('input', apply); });
  apply();
})();
"""
