"""Online feature stores named by URL: ``embedded://``, ``memory://``, ``redis://``, ``rediss://``,
``unix://``. Above both backends (the embedded one in :mod:`~mlp_platform.serving.online_store`, the
Redis one in :mod:`~mlp_platform.serving.online_store_redis`), so neither imports the other."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mlp_platform.features.spec import FeatureSpec
from mlp_platform.serving.online_store import EmbeddedBackend, OnlineFeatureStore


def backend_from_url(url: str):
    """The backend a store URL names (see :func:`store_from_url`)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = dict(parse_qsl(parts.query))
    if scheme in ("embedded", "memory"):
        path = (parts.netloc + parts.path) or None
        if scheme == "memory":
            path = None
        kwargs: dict[str, Any] = {}
        if "durability" in options:
            kwargs["durability"] = options.pop("durability")
        if "compact_every" in options:
            kwargs["compact_every"] = int(options.pop("compact_every"))
        if options:
            raise ValueError(f"{url}: unknown option(s) {sorted(options)}")
        return EmbeddedBackend(path, **kwargs)
    if scheme in ("redis", "rediss", "unix"):
        from mlp_platform.serving.online_store_redis import RedisBackend  # redis-py only when asked for

        return RedisBackend(url)
    raise ValueError(f"{url}: expected embedded:///path/to/dir, memory://, redis://host:port/db, "
                     f"rediss://... or unix:///path/to/socket")


def store_from_url(url: str, spec: FeatureSpec | None = None, **options: Any) -> OnlineFeatureStore:
    """The online store at ``url``: ``embedded:///path/to/dir`` (persisted embedded store; query
    options ``durability=flush|fsync|none``, ``compact_every=N``), ``memory://`` (embedded, not
    persisted), ``redis://host:port/db`` / ``rediss://`` / ``unix:///socket?db=0`` (query options
    ``timeout`` seconds, ``connect_timeout``, ``prefix``, ``retries``, ``max_connections`` and
    redis-py's own). ``options`` go to :class:`OnlineFeatureStore`."""
    return OnlineFeatureStore(backend_from_url(url), spec, **options)
