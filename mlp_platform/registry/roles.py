"""The registry's roles as the rest of the platform sees them: the registry and the audit log of a
settings and decider, and the serving routing state written from the roles (champion, challenger,
shadow), one file per decider (the default decider keeps its original paths).
Both the promotion path (:mod:`mlp_platform.lifecycle`) and the staged rollout
(:mod:`mlp_platform.rollout.machine`) write through here, so neither imports the other."""

from __future__ import annotations

from pathlib import Path

from mlp_platform.deciders.declaration import DEFAULT_DECIDER
from mlp_platform.registry.audit import AuditLog
from mlp_platform.registry.mlflow_registry import ModelRegistry
from mlp_platform.serving.routing import RoutingFile, RoutingState
from mlp_platform.settings import Settings


def registry_for(settings: Settings, decider=None) -> ModelRegistry:
    return ModelRegistry.from_settings(settings, decider)


def audit_for(settings: Settings, decider=None) -> AuditLog:
    """The model-event audit trail of ``decider`` (default: the default decider, whose trail keeps its
    original file name); each decider has its own chain."""
    if decider is None or decider.name == DEFAULT_DECIDER:
        return AuditLog(settings.audit_dir / "model_events.jsonl")
    return AuditLog(settings.audit_dir / f"model_events-{decider.name}.jsonl")


def routing_path_for(settings: Settings, decider=None) -> Path:
    """The serving routing state of ``decider`` (default: the default decider's original file)."""
    if decider is None or decider.name == DEFAULT_DECIDER:
        return settings.routing_path
    return settings.routing_path.with_name(f"routing-{decider.name}.json")


def rollout_path_for(settings: Settings, decider=None) -> Path:
    """The staged-rollout state of ``decider`` (default: the default decider's original file)."""
    if decider is None or decider.name == DEFAULT_DECIDER:
        return settings.rollout_path
    return settings.rollout_path.with_name(f"rollout-{decider.name}.json")


def sync_routing(settings: Settings, updated_by: str, challenger_share: float | None = None,
                 decider=None) -> RoutingState:
    """Write the serving layer's routing state from the registry roles (a promotion in Dagster
    changes live traffic with no deploy). A challenger keeps its traffic share while it stays the
    same version; a new challenger starts at 0 (the staged rollout raises it). An explicit
    ``challenger_share`` (the staged rollout's canary step) replaces that rule."""
    registry = registry_for(settings, decider)
    path = routing_path_for(settings, decider)
    routing = RoutingFile(path)
    previous = routing.read() if path.exists() else RoutingState()
    challenger = registry.alias("challenger")
    shadow = registry.alias("shadow")
    state = RoutingState(
        champion=registry.alias("champion"), challenger=challenger,
        challenger_share=(challenger_share if challenger_share is not None
                          else previous.challenger_share if challenger and challenger == previous.challenger else 0.0),
        shadows=(shadow,) if shadow else (), policy_version=previous.policy_version, updated_by=updated_by)
    return routing.write(state)
