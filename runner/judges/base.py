"""Judge interface: what a judge sees (`JudgeItem`) and what it must do (`Judge`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runner.records import Judgment
    from runner.store import Store

JUDGE_NAMES = ("none", "openai", "local")
REFERENCE_MODES = ("none", "prompt", "baseline")  # what `judge.reference` may name
JUDGE_MODES = ("absolute", "pairwise")  # `judge.mode`: a 0-10 rubric per answer, or the build vs the baseline


@dataclass
class JudgeItem:
    """One answer to judge. Deliberately carries no format or precision: the judge must not see them."""

    prompt: str
    category: str
    answer: str  # thinking already stripped
    truncated: bool  # the generation stopped at max_tokens
    reference: str | None
    generation_key: str
    repeat: int = 0  # judge repeat index (judge.repeats): a separate, separately cached verdict
    pair_answer: str | None = None  # judge.mode=pairwise: the baseline's answer to the same prompt and seed
    order: int = 0  # pairwise: 0 shows the baseline's answer first, 1 the build's (runner/judges/pairwise.py)


class Judge(Protocol):
    name: str
    model: str
    repeats: int  # verdicts per answer; > 1 measures the judge's own noise

    def check_ready(self) -> None:
        """Raise one clear ValueError for a configuration that cannot work, before any generation."""

    def __enter__(self) -> Judge:
        """Start what the judge needs (a local server when configured)."""

    def __exit__(self, *exc: object) -> None:
        """Stop what `__enter__` started."""

    def judge_all(self, items: list[JudgeItem], store: Store) -> list[Judgment]:
        """One judgment per item, same order. Per-item failures are records (scores None), not raises."""
