"""The generation contract: one rendered chat prompt and one token-id sequence per prompt, for every format.

The model's own HF tokenizer renders the chat template (``enable_thinking`` passed where the template knows
it) and tokenizes once; backends receive token ids, never text. Thinking blocks are stripped from judged
text but counted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from runner.records import GenerationContract, SamplerParams

THINK_RE = re.compile(r"<think>.*?(</think>|$)\s*", re.DOTALL)


def token_ids_sha(ids: list[int]) -> str:
    """sha256 of a token-id sequence (cache keys and records compare token ids through it)."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


@dataclass
class RenderedPrompt:
    text: str
    token_ids: list[int]

    @property
    def ids_sha(self) -> str:
        return token_ids_sha(self.token_ids)


@lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


class ChatRenderer:
    """Wraps the model's HF tokenizer: rendering, tokenizing, detokenizing, stop tokens."""

    def __init__(self, model_dir: Path, enable_thinking: bool | None):
        self.tokenizer = _load_tokenizer(str(model_dir))  # one load per process for a whole sweep
        self.path = str(model_dir)
        template = self.tokenizer.chat_template or ""
        if not template:
            raise ValueError(f"{model_dir}: the tokenizer has no chat_template; the generation contract needs one")
        self.template_sha = hashlib.sha256(template.encode()).hexdigest()
        self.knows_thinking = "enable_thinking" in template
        self.enable_thinking = enable_thinking if self.knows_thinking else None

    def render(self, user_text: str) -> RenderedPrompt:
        kwargs: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False, **kwargs
        )
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return RenderedPrompt(text, list(ids))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stop_token_ids(self) -> list[int]:
        """EOS ids from the tokenizer and generation_config.json: the one stop rule for every engine."""
        import json

        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen_cfg = Path(self.path) / "generation_config.json"
        if gen_cfg.is_file():
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if not ids:
            raise ValueError(f"{self.path}: no eos_token_id in tokenizer or generation_config.json")
        return sorted(ids)

    def contract(self, sampler: SamplerParams, stop_ids: list[int], strip_thinking: bool) -> GenerationContract:
        return GenerationContract(sampler, self.template_sha, self.enable_thinking, stop_ids, self.path, strip_thinking)


def split_thinking(text: str) -> tuple[str, str]:
    """(answer without <think>…</think>, the thinking text)."""
    thinking = "".join(m.group(0) for m in THINK_RE.finditer(text))
    return THINK_RE.sub("", text).strip(), thinking
