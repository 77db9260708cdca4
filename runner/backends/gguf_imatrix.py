"""`method=imatrix`: llama.cpp's importance matrix — the mean of x² per input channel of every matmul over the
calibration text (llama-imatrix, on the GGUF every precision starts from) — and quantization with it
(llama-quantize --imatrix). Both are llama.cpp's own tools, built from the bindings' vendored source
(runner/backends/llama_tools.py): the same llama.cpp the cells run.

The imatrix is computed once per (base GGUF, calibration text, settings) and kept in the store; every
precision of the model reuses it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from runner.calibration import Calibration
from runner.host import available_cpus
from runner.store import Entry, Store

KIND = "imatrix"  # store kind
TAIL = 12  # lines of a failing tool's output in the error


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-TAIL:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return out


def imatrix_entry(store: Store, base: Entry, base_file: Path, calibration: Calibration,
                  settings: dict[str, Any]) -> Entry:
    """The importance matrix of `base_file` over the calibration text, computed once (store kind `imatrix`)."""
    from runner.backends import llama_tools  # builds llama.cpp's tools the first time a cell needs them

    tools = llama_tools.tools(store)
    ctx, chunks = int(settings.get("ctx", 512)), int(settings.get("chunks", 0))
    payload = {"base": base.key, "calibration": calibration.sha256, "settings": {"ctx": ctx, "chunks": chunks},
               "tools": tools.versions}  # version, commit, flags, compiler: portable across hosts

    def build(tmp: Path) -> dict[str, Any]:
        out = tmp / "imatrix.gguf"
        cmd = [str(tools.imatrix), "-m", str(base_file), "-f", str(calibration.path), "-o", str(out), "-c", str(ctx),
               "-t", str(available_cpus()), "-ngl", "0", "--no-ppl"]
        if chunks > 0:
            cmd += ["--chunks", str(chunks)]
        log = _run(cmd, "llama-imatrix")
        if not out.is_file():
            raise RuntimeError(f"llama-imatrix wrote no {out.name}:\n" + "\n".join(log.strip().splitlines()[-TAIL:]))
        used = re.findall(r"computing over (\d+) chunks", log)
        return {"chunks": int(used[-1]) if used else None, "calibration": {"name": calibration.name, **calibration.spec},
                "tools": tools.record()}

    return store.get_or_build(KIND, payload, build)


def quantize(store: Store, base_file: Path, out: Path, ftype: str, imatrix: Entry, allow_requantize: bool) -> list[str]:
    """llama-quantize `base_file` to `ftype` with the importance matrix; its warnings (fallback lines)."""
    from runner.backends import llama_tools

    tools = llama_tools.tools(store)
    cmd = [str(tools.quantize), *(["--allow-requantize"] if allow_requantize else []),
           "--imatrix", str(imatrix.path / "imatrix.gguf"), str(base_file), str(out), ftype, str(available_cpus())]
    log = _run(cmd, f"llama-quantize {ftype}")
    return [line.strip() for line in log.splitlines() if "fallback" in line.lower() or "warning" in line.lower()]
