"""The agents' commands: ``pyvision serve`` and ``pyvision make-tiny-model``.

:func:`add_commands` is this package's entry in the ``pyvision.commands`` group (see :mod:`pyvision_env.cli`).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from pyvision_env.deprecation import REMOVED_IN


def add_commands(commands: Any) -> None:
    """Add ``serve`` and ``make-tiny-model`` to the ``pyvision`` subparsers."""
    serve = commands.add_parser(
        "serve", help="serve a local Hugging Face VLM behind an OpenAI-compatible chat endpoint",
        description="Serve MODEL (a folder) at http://HOST:PORT/v1 (/v1/models, /v1/chat/completions); "
                    "concurrent requests are batched.")
    serve.add_argument("model", type=Path, help="model folder (e.g. from `pyvision make-tiny-model`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests generated together (default: %(default)s)")
    serve.set_defaults(handler=run_serve)

    tiny = commands.add_parser(
        "make-tiny-model", help="build a tiny random Qwen2.5-VL (no download) for tests and CPU demos",
        description="Build a tiny random Qwen2.5-VL into OUT: byte-level BPE tokenizer with the Qwen special tokens "
                    "and chat template, ~0.2 M parameters, PIL image processor; it loads with from_pretrained. "
                    "The training demo's model is `pyvision train-demo --model-only --out OUT`.")
    tiny.add_argument("out", type=Path, help="folder to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    tiny.add_argument("--family", default="qwen2.5-vl", choices=["qwen2.5-vl", "qwen2-vl"],
                      help="model family (default: %(default)s)")
    tiny.add_argument("--demo", action="store_true",
                      help=f"deprecated (goes in {REMOVED_IN}): the same as `pyvision train-demo --model-only`")
    tiny.set_defaults(handler=run_make_tiny_model)


def run_serve(args: argparse.Namespace) -> int:
    from .hf import HFChatModel, ModelLoadError
    from .serve import make_server

    try:
        model = HFChatModel(args.model, device=args.device)
    except (ModelLoadError, ImportError) as error:
        raise SystemExit(f"pyvision serve: {error}") from None
    server = make_server(model, args.host, args.port, max_batch=args.max_batch)
    host, port = server.server_address[:2]
    print(f"serving {model.name} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    if args.demo:  # the demo's model belongs to the trainers' layer: ask the command that owns it
        from pyvision_env.cli import main

        warnings.warn(f"`pyvision make-tiny-model --demo` is deprecated and goes in {REMOVED_IN}; use "
                      "`pyvision train-demo --model-only --out OUT`", DeprecationWarning, stacklevel=1)
        return main(["train-demo", "--model-only", "--out", str(args.out), "--seed", str(args.seed)])
    from .tiny_model import make_tiny_model

    try:
        path = make_tiny_model(args.out, seed=args.seed, family=args.family)
    except ImportError as error:
        raise SystemExit(f"pyvision make-tiny-model needs torch and transformers ({error}); "
                         "pip install 'pyvision-rl[train]'") from None
    print(f"tiny {args.family} written to {path}")
    return 0
