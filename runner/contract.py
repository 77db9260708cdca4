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
from typing import Any, Protocol

from runner.records import GenerationContract, SamplerParams

THINK_RE = re.compile(r"<think>.*?(</think>|$)\s*", re.DOTALL)
TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
STOP_MARK = re.compile(r"\{#-? stop: (\S+) -?#\}")


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


def chat_template(value: str) -> str:
    """`model.chat_template`: a Jinja file, or a template shipped in runner/data/chat_templates (chatml, gemma)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    named = TEMPLATES / f"{value}.jinja"
    if named.is_file():
        return named.read_text()
    names = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.jinja")))
    raise ValueError(f"model.chat_template={value!r}: neither a file nor a named template ({names})")


class TextCodec(Protocol):
    """Text ↔ token ids, where the model's own tokenizer is not its HF one (a model given as a GGUF file)."""

    path: str

    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ChatRenderer:
    """Wraps the model's HF tokenizer: rendering, tokenizing, detokenizing, stop tokens.

    `chat=False` completes the prompt text as it is (base models); otherwise the model's chat template
    renders it, or `template` (model.chat_template) where the model has none. `codec`: the tokenizer of
    record where it is not the HF one (a GGUF's own, through llama.cpp); templates still come from HF.
    """

    def __init__(self, model_dir: Path, enable_thinking: bool | None, chat: bool = True, template: str | None = None,
                 codec: TextCodec | None = None):
        self.tokenizer = _load_tokenizer(str(model_dir))  # one load per process for a whole sweep
        self.codec = codec
        self.model_dir, self.chat = Path(model_dir), chat
        self.path = codec.path if codec else str(model_dir)  # the tokenizer of record (the contract names it)
        self.template = (self.tokenizer.chat_template or (chat_template(template) if template else "")) if chat else ""
        if chat and not self.template:
            raise ValueError(f"{model_dir}: the model has no chat template; set model.chat_template to a Jinja file "
                             f"or a named template ({', '.join(sorted(p.stem for p in TEMPLATES.glob('*.jinja')))}), "
                             "or generation.chat=false to complete prompts as plain text (base models)")
        self.template_sha = hashlib.sha256(self.template.encode()).hexdigest() if chat else "none (plain completion)"
        self.knows_thinking = "enable_thinking" in self.template
        self.enable_thinking = enable_thinking if self.knows_thinking else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.codec is not None:
            return self.codec.encode(text, add_special_tokens)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def bos_id(self) -> int | None:
        """The token the model's tokenizer puts before a text (its BOS), or None when it adds none."""
        probe = "a"
        plain, special = self.encode(probe), self.encode(probe, add_special_tokens=True)
        return special[0] if len(special) > len(plain) and special[1:1 + len(plain)] == plain else None

    def render(self, user_text: str) -> RenderedPrompt:
        if not self.chat:
            return RenderedPrompt(user_text, self.encode(user_text, add_special_tokens=True))
        kwargs: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False,
            chat_template=self.template, **kwargs)
        return RenderedPrompt(text, self.encode(text))

    def decode(self, ids: list[int]) -> str:
        if self.codec is not None:
            return self.codec.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stop_token_ids(self) -> list[int]:
        """EOS ids from the tokenizer and generation_config.json: the one stop rule for every engine."""
        import json

        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen_cfg = self.model_dir / "generation_config.json"
        if gen_cfg.is_file():
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if (stop := STOP_MARK.search(self.template)) is not None:  # a named template's end-of-turn token
            token_id = self.tokenizer.convert_tokens_to_ids(stop.group(1))
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        if not ids:
            raise ValueError(f"{self.path}: no eos_token_id in tokenizer or generation_config.json")
        return sorted(ids)

    def contract(self, sampler: SamplerParams, stop_ids: list[int], strip_thinking: bool) -> GenerationContract:
        return GenerationContract(sampler, self.template_sha, self.enable_thinking, stop_ids, self.path, strip_thinking,
                                  self.chat)


def split_thinking(text: str) -> tuple[str, str]:
    """(answer without <think>…</think>, the thinking text)."""
    thinking = "".join(m.group(0) for m in THINK_RE.finditer(text))
    return THINK_RE.sub("", text).strip(), thinking
