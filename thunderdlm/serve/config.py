"""``ServeConfig``: where the server listens, who may call it, and the limits it enforces.

Every limit is a field here (and a ``thunderdlm serve`` flag); a request past one is answered with a
4xx in OpenAI's error format naming the field, never run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from thunderdlm.errors import ConfigError

API_KEY_ENV = "THUNDERDLM_API_KEY"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"            # loopback by default: nothing outside this machine can connect
    port: int = 8000
    api_key: str | None = None         # bearer token required on /v1/* and /metrics when set
    cors_origins: list[str] = field(default_factory=list)   # empty: no CORS headers at all
    max_body_bytes: int = 1 << 20      # request body size
    max_tokens: int = 1024             # max_tokens per completion
    max_steps: int = 1024              # diffusion steps per request
    max_n: int = 8                     # completions per prompt
    max_prompts: int = 16              # prompts in one request (a list prompt)
    max_queue: int = 256               # waiting requests per model before 429
    max_batch_rows: int = 64           # rows decoded together in one sampling batch
    batch_wait_ms: float = 20.0        # how long a batch waits for batch-mates (after its first request
                                       # arrived, and after the previous batch ended)
    device: str = "auto"

    def __post_init__(self):
        for name in ("max_body_bytes", "max_tokens", "max_steps", "max_n", "max_prompts",
                     "max_queue", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve: {name} must be ≥ 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"serve: batch_wait_ms must be ≥ 0, got {self.batch_wait_ms}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"serve: port must be in 0..65535, got {self.port}")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
