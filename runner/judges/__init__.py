"""LLM judges behind OpenAI-compatible endpoints; `make_judge` builds the one a judge config names."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.judges.base import JUDGE_NAMES, Judge


def make_judge(judge_cfg: DictConfig | dict[str, Any]) -> Judge | None:
    """Build the judge named by `judge_cfg.name`; None for `none`."""
    cfg = OmegaConf.to_container(judge_cfg, resolve=True) if isinstance(judge_cfg, DictConfig) else dict(judge_cfg)
    name = cfg.get("name")
    if name == "none":
        return None
    if name in ("openai", "local"):
        from runner.judges.openai_judge import OpenAIJudge, settings_from_cfg

        return OpenAIJudge(settings_from_cfg(cfg))
    raise ValueError(f"judge.name {name!r} is unknown; options: {list(JUDGE_NAMES)} (conf/judge/)")
