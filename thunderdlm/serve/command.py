"""The ``thunderdlm serve RUN [RUN ...]`` verb: its flags (one per ``ServeConfig`` field) and run."""
from __future__ import annotations

from thunderdlm.serve.config import API_KEY_ENV, ServeConfig


def add_parser(sub) -> None:
    d = ServeConfig.__dataclass_fields__
    sv = sub.add_parser("serve", help="serve runs over HTTP (OpenAI API, streaming, a live page at /)")
    sv.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or exported model folders)")
    sv.add_argument("--host", default=d["host"].default,
                    help="address to listen on (default loopback; 0.0.0.0 exposes it to the network)")
    sv.add_argument("--port", type=int, default=d["port"].default)
    sv.add_argument("--api-key", default=None,
                    help=f"require 'Authorization: Bearer KEY' on /v1/* and /metrics (or set {API_KEY_ENV})")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="allow browser calls from this origin (repeatable; default: no CORS)")
    for name, help_ in (("max_body_bytes", "request body size limit"),
                        ("max_tokens", "largest max_tokens per completion"),
                        ("max_steps", "largest number of diffusion steps"),
                        ("max_n", "largest n"), ("max_prompts", "most prompts in one request"),
                        ("max_queue", "waiting requests per model before 429"),
                        ("max_batch_rows", "rows decoded together in one batch")):
        sv.add_argument("--" + name.replace("_", "-"), type=int, default=d[name].default,
                        help=f"{help_} (default {d[name].default})")
    sv.add_argument("--batch-wait-ms", type=float, default=d["batch_wait_ms"].default,
                    help="how long a request waits for batch-mates when the server is idle")
    sv.add_argument("--device", default="auto")
    sv.set_defaults(func=run)


def run(args) -> int:
    from thunderdlm.serve.server import serve

    cfg = ServeConfig(host=args.host, port=args.port, api_key=args.api_key, cors_origins=args.cors_origin,
                      max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens,
                      max_steps=args.max_steps, max_n=args.max_n, max_prompts=args.max_prompts,
                      max_queue=args.max_queue, max_batch_rows=args.max_batch_rows,
                      batch_wait_ms=args.batch_wait_ms, device=args.device)
    serve(args.runs, cfg)
    return 0
