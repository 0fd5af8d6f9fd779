"""Loading the runs and running the app under uvicorn: in the foreground (``thunderdlm serve``) or
in a background thread on a free loopback port (``ServerThread``: tests and benchmarks)."""
from __future__ import annotations

import threading
import time

from thunderdlm.errors import ThunderError
from thunderdlm.serve.config import ServeConfig
from thunderdlm.serve.engine import ServedModel, model_names
from thunderdlm.serve.metrics import Metrics


def build_app(runs: list, cfg: ServeConfig, lms: list | None = None):
    """The app serving ``runs`` (run folders, or exported model folders); ``lms`` are already
    loaded models for them (tests), else each run is loaded with ``thunderdlm.load``."""
    import thunderdlm
    from thunderdlm.serve.app import create_app

    if not runs:
        raise ThunderError("serve: give at least one run folder")
    metrics = Metrics()
    lms = lms or [thunderdlm.load(run, device=cfg.device) for run in runs]
    models = {name: ServedModel(name, lm, cfg, metrics.observe_batch)
              for name, lm in zip(model_names([str(r) for r in runs]), lms)}
    return create_app(models, cfg, metrics)


def serve(runs: list, cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    app = build_app(runs, cfg)
    names = ", ".join(app.state.models)
    auth = "bearer token required" if cfg.api_key else "no API key"
    print(f"serving {names} on http://{cfg.host}:{cfg.port} ({auth}); the page is at /", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)


class ServerThread:
    """The app under uvicorn in a daemon thread on ``host``:``port`` (0: a free port)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
