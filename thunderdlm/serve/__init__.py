"""``thunderdlm serve``: an OpenAI-compatible HTTP server for trained runs (issue 17).

config.py (limits, auth, address) · schemas.py (request bodies, error JSON) · jobs.py (a prompt's
rows and settings) · engine.py (a served model: validation, jobs) · batch.py (one sampling batch,
the stream) · scheduler.py (queue + worker per model) · metrics.py (Prometheus) · app.py (routes,
SSE) · server.py (uvicorn) · command.py (the CLI verb) · static/index.html (the live page).
FastAPI and uvicorn are imported only here, never by the rest of the package.
"""
from thunderdlm.serve.config import ServeConfig

__all__ = ["ServeConfig"]
