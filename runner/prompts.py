"""Prompt sets: inline in `conf/prompts/*.yaml`, or a user file (`prompts.file`: JSONL, or YAML with a list
of items or `items:`), validated into `Prompt`s. An item's optional `check` is a `runner.checks` spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.checks import validate_check

_KEYS = {"id", "category", "prompt", "reference", "check"}


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str
    reference: str | None = None
    check: dict | list | None = field(default=None, hash=False)  # see runner.checks; None: no check


def _prompt_from(obj: Any, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with id, category, prompt; got {type(obj).__name__}")
    missing = [k for k in ("id", "category", "prompt") if not obj.get(k)]
    if missing:
        raise ValueError(f"{where}: missing or empty {', '.join(missing)}")
    unknown = set(obj) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if obj.get("check") is not None:
        validate_check(obj["check"], where)
    return Prompt(str(obj["id"]), str(obj["category"]), str(obj["prompt"]), obj.get("reference"), obj.get("check"))


def read_items(path: str | Path) -> list[tuple[str, Any]]:
    """The raw items of a prompts file, each with where it is (`FILE:LINE`): YAML by suffix, else JSONL."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (prompts.file)")
    return _yaml_items(path) if path.suffix.lower() in (".yaml", ".yml") else _jsonl_items(path)


def _jsonl_items(path: Path) -> list[tuple[str, Any]]:
    items = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"{path}:{n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: malformed JSON line ({e.msg})") from e
    return items


def _yaml_items(path: Path) -> list[tuple[str, Any]]:
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
        nodes = _item_nodes(root, path)
        loader = yaml.SafeLoader("")
        return [(f"{path}:{node.start_mark.line + 1}", loader.construct_document(node)) for node in nodes]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ValueError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', None) or e})") from e


def _item_nodes(root: yaml.Node | None, path: Path) -> list[yaml.Node]:
    """The item nodes of a YAML prompts file: the top-level list, or the list under `items:`."""
    if root is None:
        return []
    if isinstance(root, yaml.MappingNode):
        root = next((value for key, value in root.value if key.value == "items"), None)
    if not isinstance(root, yaml.SequenceNode):
        raise ValueError(f"{path}: expected a list of prompt items, or a mapping with `items:` (a list)")
    return root.value


def load_prompts(prompts_cfg: dict[str, Any]) -> list[Prompt]:
    """Prompts of the `prompts` config group (as a plain dict): from `file` if set, else inline `items`."""
    if prompts_cfg.get("file"):
        source = str(prompts_cfg["file"])
        items = read_items(source)
    else:
        source = f"conf/prompts/{prompts_cfg.get('name')}.yaml"
        items = [(f"{source}: items[{i}]", item) for i, item in enumerate(prompts_cfg.get("items") or [])]
    if not items:
        raise ValueError(f"{source}: the prompt set is empty")
    prompts: list[Prompt] = []
    first: dict[str, str] = {}
    for where, obj in items:
        prompt = _prompt_from(obj, where)
        if prompt.id in first:
            raise ValueError(f"{where}: duplicate prompt id {prompt.id!r} (first at {first[prompt.id]})")
        first[prompt.id] = where
        prompts.append(prompt)
    return prompts
