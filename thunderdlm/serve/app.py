"""The FastAPI application: OpenAI-compatible routes, SSE streaming, auth, limits, the page.

Routes: ``GET /`` (the live page), ``GET /health``, ``GET /metrics`` (Prometheus text),
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``. Every error is OpenAI's
JSON (``{"error": {"message", "type", "param", "code"}}``): 400 naming the field for a bad request,
401 without the bearer token (when the server has one), 404 for an unknown model or path, 413 for a
body over the limit, 429 with Retry-After when the model's queue is full. A streaming client that
disconnects cancels its job; so does a waiting non-streaming one.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from thunderdlm.errors import ThunderError
from thunderdlm.serve.config import ServeConfig
from thunderdlm.serve.engine import ServedModel
from thunderdlm.serve.jobs import Job, JobResult
from thunderdlm.serve.metrics import Metrics
from thunderdlm.serve.scheduler import QueueFull
from thunderdlm.serve.schemas import ApiError, ChatRequest, CompletionRequest, from_validation_error

log = logging.getLogger("thunderdlm.serve")
STATIC = Path(__file__).parent / "static"
KNOWN_PATHS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
_FLAG = re.compile(r"--([a-z][a-z-]*)")
_FLAG_TO_FIELD = {"max-new-tokens": "max_tokens", "length": "max_tokens", "prompt": "prompt",
                  "infill": "infill"}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def sampler_error(e: Exception) -> ApiError:
    """A sampler's refusal as a 400 naming the field its message names (``--steps`` → steps)."""
    if isinstance(e, ThunderError):
        m = _FLAG.search(str(e))
        param = (_FLAG_TO_FIELD.get(m.group(1), m.group(1).replace("-", "_"))) if m else None
        return ApiError(400, str(e).replace("--", ""), param)
    return ApiError(500, f"internal error while sampling ({type(e).__name__}); see the server log",
                    type="server_error")


class Guard:
    """ASGI middleware: bearer auth, the body-size limit on Content-Length, request metrics."""

    def __init__(self, app, cfg: ServeConfig, metrics: Metrics):
        self.app, self.cfg, self.metrics = app, cfg, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, t0, status, started = scope["path"], time.perf_counter(), [500], [False]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await error_response(refusal)(scope, receive, send_status)
            await self.app(scope, receive, send_status)
        except Exception as e:                    # a server bug: logged, answered as JSON if still possible
            log.exception("error in %s", path)
            if not started[0]:
                bug = ApiError(500, f"internal error ({type(e).__name__}); see the server log",
                               type="server_error")
                await error_response(bug)(scope, receive, send_status)
        finally:
            label = path if path in KNOWN_PATHS else "other"
            self.metrics.observe_request(label, status[0], time.perf_counter() - t0)

    def _refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.cfg.api_key and (path.startswith("/v1/") or path == "/metrics"):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.cfg.api_key.encode()):
                return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                type="invalid_request_error", code="invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return ApiError(400, "Content-Length is not a number")
            if int(length) > self.cfg.max_body_bytes:
                return ApiError(413, f"request body of {int(length)} bytes is over this server's limit "
                                     f"of {self.cfg.max_body_bytes}", code="body_too_large")
        return None


async def read_body(request: Request, cfg: ServeConfig, schema):
    """The JSON body, size-limited while read (chunked bodies too), validated by ``schema``."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                raise ApiError(413, f"request body is over this server's limit of {cfg.max_body_bytes} "
                                    "bytes", code="body_too_large")
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected while sending the body") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None


def create_app(models: dict[str, ServedModel], cfg: ServeConfig, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    for name, served in models.items():
        metrics.queue_depth[name] = lambda s=served: s.scheduler.depth

    async def lifespan(app):
        yield
        for served in models.values():
            await asyncio.to_thread(served.scheduler.close)

    app = FastAPI(title="thunderdlm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.models, app.state.metrics, app.state.cfg = models, metrics, cfg

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                                       type="invalid_request_error"))

    def lookup(name: str) -> ServedModel:
        if name not in models:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists "
                                f"{sorted(models)}", "model", code="model_not_found")
        return models[name]

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(models),
                "queue": {n: s.scheduler.depth for n, s in models.items()}}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [s.card() for s in models.values()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await read_body(request, cfg, CompletionRequest)
        served = lookup(req.model)
        return await _respond(request, served, served.plan_completion(req), req, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await read_body(request, cfg, ChatRequest)
        served = lookup(req.model)
        jobs, _ = served.plan_chat(req)
        return await _respond(request, served, jobs, req, chat=True)

    app.add_middleware(Guard, cfg=cfg, metrics=metrics)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


# ---- answering ------------------------------------------------------------------------------------

async def _respond(request: Request, served: ServedModel, jobs: list[Job], req, chat: bool) -> Response:
    loop = asyncio.get_running_loop()
    for job in jobs:
        job.attach(loop)
    try:
        served.scheduler.submit(jobs)
    except QueueFull as e:
        raise ApiError(429, f"model {served.name!r} has a full queue ({served.cfg.max_queue} waiting); "
                            f"retry after {e.retry_after} s", type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(e.retry_after)}) from None
    reply = Reply(served.name, jobs, req, chat)
    if req.stream:
        return StreamingResponse(reply.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        results = [await _wait(request, job) for job in jobs]
    except ConnectionAbortedError:
        return Response(status_code=499)              # the client is gone; nobody reads this
    finally:
        for job in jobs:
            job.cancel()                              # no-op for finished jobs
    return JSONResponse(reply.body(results))


async def _wait(request: Request, job: Job) -> JobResult:
    while True:
        try:
            kind, payload = await asyncio.wait_for(job.events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ConnectionAbortedError() from None
            continue
        if kind == "done":
            return payload
        if kind == "error":
            raise sampler_error(payload)


class Reply:
    """The OpenAI-shaped answer of one request: a JSON body or the SSE chunks."""

    def __init__(self, model: str, jobs: list[Job], req, chat: bool):
        self.model, self.jobs, self.req, self.chat = model, jobs, req, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def usage(self, results: list[JobResult]) -> dict:
        prompt = sum(sum(1 for e in (j.editable or [False] * len(j.prompt_ids)) if not e) for j in self.jobs)
        completion = sum(r.completion_tokens for res in results for r in res.rows)
        nfe = sum(res.nfe for res in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "nfe": nfe, "steps": sum(res.steps for res in results),
                "batch_rows": max(res.batch_rows for res in results),
                "tokens_per_call": round(max(res.tokens_per_call for res in results), 4)}

    def _echo(self, job: Job) -> str:
        return job.prompt_text if (not self.chat and self.req.echo) else ""

    def body(self, results: list[JobResult]) -> dict:
        choices = []
        for job, res in zip(self.jobs, results):
            for row in res.rows:
                i = len(choices)
                if self.chat:
                    choices.append({"index": i, "message": {"role": "assistant", "content": row.text},
                                    "logprobs": None, "finish_reason": row.finish_reason})
                else:
                    choices.append({"index": i, "text": self._echo(job) + row.text, "logprobs": None,
                                    "finish_reason": row.finish_reason})
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(results)}

    def _chunk(self, index: int, text: str | None, finish: str | None, first: bool = False) -> str:
        if self.chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return _sse({"id": self.id, "object": obj, "created": self.created, "model": self.model,
                     "choices": [choice]})

    async def sse(self):
        results, n = [], self.req.n
        try:
            for j, job in enumerate(self.jobs):
                for i in range(job.n):
                    if self.chat or self._echo(job):
                        yield self._chunk(j * n + i, self._echo(job) or ("" if self.chat else None), None, first=True)
                while True:
                    kind, payload = await job.events.get()
                    if kind == "delta":
                        yield self._chunk(j * n + payload[0], payload[1], None)
                    elif kind == "state":
                        yield _sse({"object": f"{self.object}.state", "id": self.id, "model": self.model,
                                    "index": j * n + payload[0], **payload[1]}, event="state")
                    elif kind == "done":
                        results.append(payload)
                        for i, row in enumerate(payload.rows):
                            yield self._chunk(j * n + i, None if self.chat else "", row.finish_reason)
                        break
                    else:                                   # "error": OpenAI's error object, then the end
                        yield _sse(sampler_error(payload).body())
                        yield "data: [DONE]\n\n"
                        return
            if self.req.include_usage:
                yield _sse({"id": self.id, "object": "chat.completion.chunk" if self.chat else self.object,
                            "created": self.created, "model": self.model, "choices": [],
                            "usage": self.usage(results)})
            yield "data: [DONE]\n\n"
        finally:
            for job in self.jobs:
                job.cancel()              # the client went away mid-stream, or the stream is over


def _sse(data: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"
