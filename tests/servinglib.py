"""Helpers for the serving tests: the service's configuration as the environment of the test says."""

from __future__ import annotations

from dataclasses import replace

from mlp_platform.serving.service import ServingConfig
from mlp_platform.settings import Settings, load_serving_settings

#: Environment of a service process that is fed the synthetic history (months before today's clock):
#: no maximum age, and a late grace wide enough for test clients that interleave far-apart times.
HISTORY_REPLAY_ENV = {"MLP_EVENT_TIME_MAX_AGE_S": "none", "MLP_EVENT_TIME_LATE_GRACE_S": str(400 * 86_400)}


def config_from_env(settings: Settings) -> ServingConfig:
    """``ServingConfig.from_settings`` with the serving knobs re-read from the (patched) environment."""
    return ServingConfig.from_settings(replace(settings, serving=load_serving_settings()))
