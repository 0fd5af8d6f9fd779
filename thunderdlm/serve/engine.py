"""``ServedModel``: one loaded run and its scheduler; turns a validated request into jobs.

``plan`` checks everything a request can get wrong against the model and the server's limits
before any work is queued — each problem an ``ApiError`` (400) naming the field — and builds one
``Job`` per prompt: a continuation of the prompt by ``max_tokens`` tokens, or an infill canvas
(OpenAI's ``suffix``: prompt, ``max_tokens`` generated tokens, suffix; or an ``infill`` template
with ``[MASK:N]`` spans).
"""
from __future__ import annotations

import time
from pathlib import Path

from thunderdlm.errors import ThunderError
from thunderdlm.sampling.batched import batch_key
from thunderdlm.sampling.guidance import unconditional_token
from thunderdlm.sampling.requests import parse_template
from thunderdlm.serve.config import ServeConfig
from thunderdlm.serve.jobs import Job, Settings
from thunderdlm.serve.scheduler import Scheduler
from thunderdlm.serve.schemas import ApiError, ChatRequest, CompletionRequest

DEFAULT_COMPLETION_TOKENS = 16          # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256


class ServedModel:
    def __init__(self, name: str, lm, cfg: ServeConfig, on_batch=None):
        self.name, self.lm, self.cfg = name, lm, cfg
        self.created = int(time.time())
        self.scheduler = Scheduler(name, lm, cfg.max_queue, cfg.max_batch_rows, cfg.batch_wait_ms, on_batch)

    @property
    def chat_template(self) -> bool:
        backend = getattr(self.lm.tokenizer, "backend", None)
        return bool(getattr(backend, "chat_template", None))

    def card(self) -> dict:
        lm = self.lm
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "thunderdlm",
                "process": lm.cfg.process.name, "backbone": lm.cfg.model.name, "context": lm.context,
                "block_grid": lm.process.block_grid, "chat": self.chat_template,
                "supports_threshold": lm.process.supports_threshold,
                "mask_token": lm.process.noise_token_id is not None, "run": str(lm.run_dir)}

    # ---- planning ---------------------------------------------------------------------------------
    def _encode(self, text: str, param: str) -> list[int]:
        try:
            return self.lm.tokenizer.encode(text) if text else []
        except (ThunderError, ValueError, KeyError) as e:
            raise ApiError(400, f"{param}: cannot be encoded by this model's tokenizer: {e}", param) from None

    def _settings(self, req, max_tokens: int | None, default_tokens: int) -> Settings:
        cfg, lm = self.cfg, self.lm
        tokens = default_tokens if max_tokens is None else max_tokens
        param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        if tokens > cfg.max_tokens:
            raise ApiError(400, f"{param} is {tokens}; this server allows at most {cfg.max_tokens}", param)
        if req.n > cfg.max_n:
            raise ApiError(400, f"n is {req.n}; this server allows at most {cfg.max_n}", "n")
        steps = req.steps if req.steps is not None else min(tokens, cfg.max_steps)
        if steps > cfg.max_steps:
            raise ApiError(400, f"steps is {steps}; this server allows at most {cfg.max_steps}", "steps")
        if req.threshold is not None and not lm.process.supports_threshold:
            raise ApiError(400, f"threshold needs a process that shows undecided positions as a mask "
                                f"(masked, block); model {self.name!r} is {lm.cfg.process.name!r}", "threshold")
        if req.cfg_scale:
            try:
                unconditional_token(lm.process)
            except ThunderError as e:
                raise ApiError(400, f"model {self.name!r}: {e}", "cfg_scale") from None
        return Settings(tokens, steps, req.temperature, req.top_p, req.remasking, req.block_length,
                        req.threshold, tuple(req.stop or ()), req.top_k, req.cfg_scale)

    def _continuation(self, prompt: str, param: str) -> list[int]:
        ids = self._encode(prompt, param)
        if len(ids) >= self.lm.context:
            raise ApiError(400, f"{param} has {len(ids)} tokens but model {self.name!r} reads at most "
                                f"{self.lm.context - 1} before generating; shorten it", param)
        return ids

    def _infill(self, parts: list[tuple[list[int], int]], param: str) -> tuple[list[int], list[bool]]:
        ids, editable = [], []
        for seg, masks in parts:
            ids += seg if not masks else [0] * masks
            editable += [masks > 0] * (masks or len(seg))
        if len(ids) > self.lm.context:
            raise ApiError(400, f"the canvas (known text + generated tokens) needs {len(ids)} tokens but "
                                f"model {self.name!r} has a context of {self.lm.context}", param)
        return ids, editable

    def plan_completion(self, req: CompletionRequest) -> list[Job]:
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of must equal n (diffusion sampling does not re-rank)", "best_of")
        if len(req.prompts) > self.cfg.max_prompts:
            raise ApiError(400, f"prompt holds {len(req.prompts)} prompts; this server allows at most "
                                f"{self.cfg.max_prompts}", "prompt")
        if req.infill is not None:
            if req.suffix is not None or req.prompts != [""]:
                raise ApiError(400, "infill is a whole template: give it without prompt and suffix", "infill")
            try:
                template = parse_template(req.infill)
            except ThunderError as e:
                raise ApiError(400, f"infill: {e}", "infill") from None
            n_new = sum(m for _, m in template)
            settings = self._settings(req, n_new, n_new)
            parts = [(self._encode(text, "infill"), m) if not m else ([], m) for text, m in template]
            ids, editable = self._infill(parts, "infill")
            return [self._job(settings, ids, editable, req, req.infill)]
        settings = self._settings(req, req.max_tokens, DEFAULT_COMPLETION_TOKENS)
        if req.suffix is not None:
            if len(req.prompts) > 1:
                raise ApiError(400, "suffix infills one prompt; give a single prompt string", "suffix")
            parts = [(self._encode(req.prompts[0], "prompt"), 0), ([], settings.max_tokens),
                     (self._encode(req.suffix, "suffix"), 0)]
            ids, editable = self._infill(parts, "max_tokens")
            return [self._job(settings, ids, editable, req, req.prompts[0])]
        return [self._job(settings, self._continuation(p, "prompt"), None, req, p) for p in req.prompts]

    def plan_chat(self, req: ChatRequest) -> tuple[list[Job], str]:
        if not self.chat_template:
            raise ApiError(400, f"model {self.name!r} has no chat template (its tokenizer is "
                                f"{type(self.lm.tokenizer).__name__}); use /v1/completions", "model")
        messages = [m.model_dump(include={"role", "content"}) for m in req.messages]
        try:
            prompt = self.lm.tokenizer.backend.apply_chat_template(messages, tokenize=False,
                                                                   add_generation_prompt=True)
        except Exception as e:            # a template error: the messages do not fit it
            raise ApiError(400, f"messages: the chat template refused them: {e}", "messages") from None
        settings = self._settings(req, req.token_budget, min(DEFAULT_CHAT_TOKENS, self.cfg.max_tokens))
        return [self._job(settings, self._continuation(prompt, "messages"), None, req, prompt)], prompt

    def _job(self, settings: Settings, ids: list[int], editable, req, text: str) -> Job:
        group = () if editable is not None else batch_key(self.lm.process, self.lm.model, len(ids))
        return Job(settings, ids, editable, req.n, req.seed, prompt_text=text, group=group,
                   stream=req.stream, states=req.stream and req.stream_states)


def model_names(runs: list[str]) -> list[str]:
    """A name per run folder: its folder name, made unique with its parent's when two collide."""
    names = [Path(r).resolve().name for r in runs]
    return [f"{Path(r).resolve().parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]
