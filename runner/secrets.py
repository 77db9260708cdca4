"""Secrets never reach disk: spot them in command-line overrides, by key name and by value shape.

Hydra saves every override (overrides.yaml, hydra.yaml, multirun.yaml) and the runner copies them into
records, so a secret given on the command line would be written out. Secrets come from the environment
through `${oc.env:...}` interpolations, which stay unresolved in saved configs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from runner.identity import override_key, parse_override

SECRET_KEY = re.compile(r"(^|[._-])(api[_-]?key|apikey|access[_-]?key|token|secret|password|passwd|credentials?)$",
                        re.IGNORECASE)
SECRET_VALUES = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "an API key (sk-...)"),
    (re.compile(r"\bBearer\s+\S+", re.IGNORECASE), "a bearer token"),
    (re.compile(r"\b(hf|ghp|gho|ghs|github_pat|xox[abp])_[A-Za-z0-9_]{8,}"), "an access token"),
    (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^/\s@]+@", re.IGNORECASE), "a URL with credentials (user:password@host)"),
    (re.compile(r"--?(api[_-]?key|token|password|secret)\b", re.IGNORECASE), "a secret option"),
)
ADVICE = ("pass secrets through the environment (e.g. OPENAI_API_KEY, read by ${oc.env:...} in conf/judge/*.yaml); "
          "command-line overrides are saved in the outputs")


class SecretOverrideError(ValueError):
    """A command-line override that would write a secret to disk."""


def secret_in(item: str) -> str | None:
    """What kind of secret the override `key=value` carries, or None."""
    key, value = parse_override(item)
    if not value or value.startswith("${"):
        return None
    if SECRET_KEY.search(key):
        return f"a secret key ({key})"
    for pattern, what in SECRET_VALUES:
        if pattern.search(value):
            return what
    return None


def check_overrides(overrides: Iterable[str]) -> None:
    """Raise one SecretOverrideError naming the first override that carries a secret."""
    for item in overrides:
        if (what := secret_in(str(item))) is not None:
            raise SecretOverrideError(f"{override_key(item)}: {what} given on the command line; {ADVICE}")
