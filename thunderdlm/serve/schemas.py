"""Request bodies of the OpenAI API as pydantic models, and OpenAI's error JSON.

``CompletionRequest`` is OpenAI's ``/v1/completions`` body plus the diffusion extensions, under
their own names: ``steps`` (reverse steps), ``remasking``, ``block_length``, ``threshold``
(Fast-dLLM's τ), ``top_k`` (as vLLM), ``cfg_scale`` (LLaDA's classifier-free guidance), ``infill`` (a template with ``[MASK:N]`` spans, instead of prompt + suffix) and
``stream_states`` (SSE events carrying the whole canvas after every denoising step). Fields
OpenAI has but a diffusion sampler cannot honour (``logprobs``, penalties, ``logit_bias``,
``best_of`` ≠ n) are accepted at their neutral value and refused otherwise, naming the field.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def from_validation_error(e: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field (``messages.0.content``)."""
    err = e.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value")
    return ApiError(400, f"{param}: {msg}" if param else msg, param)


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # diffusion extensions
    steps: int | None = Field(None, ge=1)
    remasking: Literal["ancestral", "low_confidence", "random"] = "ancestral"
    block_length: int | None = Field(None, ge=1)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0)                      # vLLM's extension: 0 = off
    cfg_scale: float = Field(0.0, ge=0.0, le=100.0)  # LLaDA's classifier-free guidance: 0 = off
    stream_states: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, v):
        if v != 0:
            raise ValueError("not supported by diffusion sampling (only 0)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if v:
            raise ValueError("not supported by diffusion sampling")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[str] = ""
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    infill: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("a list prompt needs at least one string")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v is not None:
            raise ValueError("log-probabilities are not available from diffusion sampling")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v:
            raise ValueError("log-probabilities are not available from diffusion sampling")
        return v

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
