"""Helpers for the serving tests: the service's configuration as the environment of the test says,
and an app served over HTTP on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from mlp_platform.serving.service import ServingConfig
from mlp_platform.settings import Settings, load_serving_settings

#: Environment of a service process that is fed the synthetic history (months before today's clock):
#: no maximum age, and a late grace wide enough for test clients that interleave far-apart times.
HISTORY_REPLAY_ENV = {"MLP_EVENT_TIME_MAX_AGE_S": "none", "MLP_EVENT_TIME_LATE_GRACE_S": str(400 * 86_400)}


def config_from_env(settings: Settings) -> ServingConfig:
    """``ServingConfig.from_settings`` with the serving knobs re-read from the (patched) environment."""
    return ServingConfig.from_settings(replace(settings, serving=load_serving_settings()))


@contextlib.contextmanager
def served_on_loopback(app, *, start_timeout_s: float = 30.0) -> Iterator[str]:
    """``app`` served by uvicorn (lifespan on) on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
