"""Prompt sets: inline in `conf/prompts/*.yaml` or a JSONL file, validated into `Prompt`s."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str
    reference: str | None = None


def _prompt_from(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with id, category, prompt; got {type(obj).__name__}")
    missing = [k for k in ("id", "category", "prompt") if not obj.get(k)]
    if missing:
        raise ValueError(f"{where}: missing or empty {', '.join(missing)}")
    unknown = set(obj) - {"id", "category", "prompt", "reference"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return Prompt(str(obj["id"]), str(obj["category"]), str(obj["prompt"]), obj.get("reference"))


def read_jsonl(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (prompts.file)")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: malformed JSON line ({e.msg})") from e
        prompts.append(_prompt_from(obj, f"{path}:{n}"))
    return prompts


def load_prompts(prompts_cfg: dict[str, Any]) -> list[Prompt]:
    """Prompts of the `prompts` config group (as a plain dict): from `file` if set, else inline `items`."""
    if prompts_cfg.get("file"):
        prompts = read_jsonl(prompts_cfg["file"])
        source = str(prompts_cfg["file"])
    else:
        source = f"conf/prompts/{prompts_cfg.get('name')}.yaml"
        prompts = [_prompt_from(item, f"{source}: items[{i}]") for i, item in enumerate(prompts_cfg.get("items") or [])]
    if not prompts:
        raise ValueError(f"{source}: the prompt set is empty")
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise ValueError(f"{source}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
    return prompts
