"""`python -m runner.judges.serve --model X.gguf [options] [llama_cpp.server options]`: the judge server.

llama_cpp.server's app, with the model loaded under the GGUF backend's llama.cpp settings (threads,
`n_gpu_layers: auto`, `extra_bufts`). The bare `python -m llama_cpp.server` loads with llama.cpp's extra
buffer types on, which segfault on quantized tensors on AVX512+AMX CPUs at the first request.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner.backends.gguf import LlamaSettings, model_params  # also sets OMP_WAIT_POLICY before llama.cpp loads


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runner.judges.serve", allow_abbrev=False,
                                description="llama_cpp.server, loading the model as the runner's GGUF backend does.",
                                epilog="Other options are llama_cpp.server's own (python -m llama_cpp.server --help).")
    p.add_argument("--model", required=True, help="the GGUF file")
    p.add_argument("--model_alias", help="the model name clients ask for (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n_ctx", type=int, default=4096)
    p.add_argument("--n_threads", type=_int_or_auto, default="auto", help="integer or auto")
    p.add_argument("--n_threads_batch", type=_int_or_auto, default="auto", help="integer or auto")
    p.add_argument("--n_gpu_layers", type=_int_or_auto, default="auto",
                   help="integer (-1: all) or auto (all when llama.cpp has a GPU)")
    p.add_argument("--extra_bufts", type=_bool, default=False, help="llama.cpp extra buffer types (repacking, AMX)")
    p.add_argument("--chat_format", help="llama_cpp chat format, e.g. chatml (default: the GGUF's chat template)")
    return p


def llama_server_options(rest: list[str]) -> tuple[dict[str, Any], list[str]]:
    """llama_cpp.server's own command-line options, parsed as its CLI does (only those given), and the rest."""
    from llama_cpp.server.cli import add_args_from_model
    from llama_cpp.server.settings import Settings

    p = argparse.ArgumentParser(allow_abbrev=False)
    add_args_from_model(p, Settings)
    given, unknown = p.parse_known_args(rest)
    return {k: v for k, v in vars(given).items() if v is not None}, unknown


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    p = parser()
    args, rest = p.parse_known_args(argv)
    extra, unknown = llama_server_options(rest)
    if unknown:
        p.error(f"unrecognized arguments (neither ours nor llama_cpp.server's): {' '.join(unknown)}")
    llama = LlamaSettings.from_config(vars(args))
    model = ModelSettings(**{k: v for k, v in extra.items() if k in ModelSettings.model_fields}, model=args.model,
                          model_alias=args.model_alias, n_ctx=args.n_ctx, chat_format=args.chat_format,
                          **llama.llama_kwargs())
    server = ServerSettings(**{k: v for k, v in extra.items() if k in ServerSettings.model_fields},
                            host=args.host, port=args.port)
    print(f"runner.judges.serve: {args.model} on {llama.device} with n_ctx={model.n_ctx} n_threads={model.n_threads} "
          f"n_threads_batch={model.n_threads_batch} n_gpu_layers={model.n_gpu_layers} extra_bufts={llama.extra_bufts} "
          f"chat_format={model.chat_format}", file=sys.stderr, flush=True)
    # For the process lifetime, not just the first load: the app may load the model again.
    with model_params(llama.extra_bufts):
        app = create_app(server_settings=server, model_settings=[model])
        uvicorn.run(app, host=server.host, port=server.port, ssl_keyfile=server.ssl_keyfile,
                    ssl_certfile=server.ssl_certfile)


if __name__ == "__main__":
    main()
