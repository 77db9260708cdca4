"""A report as sections, rendered to markdown and to one self-contained HTML page (the report and
`replay compare`)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

import jinja2
import markupsafe
import pandas as pd

from runner.analysis import answer_view


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs; **bold** and `code` are the only markup
    table: pd.DataFrame | None = None
    image: str | None = None  # file name of a plot beside the report


def render_markdown(sections: list[Section], title: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        if s.table is not None:
            out += [s.table.to_markdown(index=False), ""]
        if s.image:
            out += [f"![{s.title}]({s.image})", ""]
    return "\n".join(out)


def _inline(text: str) -> markupsafe.Markup:
    """Escape, then turn **bold** and `code` into tags."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return markupsafe.Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", text))


HTML = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
{{ style }}
</style></head><body>
<h1>{{ title }}</h1>
{% if answers %}<p><a href="#answers">Answers, side by side</a></p>{% endif %}
{% for s in sections %}<h2>{{ s.title }}</h2>
{% for p in s.text %}<p>{{ inline(p) }}</p>
{% endfor %}{% if s.table is not none %}{{ s.table.to_html(index=False, border=0, classes="sortable") | safe }}
{% endif %}{% if s.image and png %}<img alt="{{ s.title }}" src="data:image/png;base64,{{ png }}">
{% endif %}{% endfor %}{{ answers }}
<script>{{ script }}</script>
</body></html>
""")


def render_html(sections: list[Section], title: str, png: bytes | None = None,
                answers: markupsafe.Markup = markupsafe.Markup("")) -> str:
    """One self-contained page (inline CSS and JS, the plot embedded, every table sortable), everything
    escaped; `answers`: the answer view (runner/answer_view.py), already escaped."""
    return HTML.render(title=title, sections=sections, inline=_inline, png=base64.b64encode(png).decode() if png else None,
                       answers=answers, style=markupsafe.Markup(answer_view.STYLE),
                       script=markupsafe.Markup(answer_view.SCRIPT))
