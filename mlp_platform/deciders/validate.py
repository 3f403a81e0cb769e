"""The whole check of a decider declaration: its structure (:mod:`.declaration`) and the sections
whose fields belong to other parts of the platform (the promotion gates, the staged rollout), built
into their configurations so that a typo fails where the file is read, not at the first promotion."""

from __future__ import annotations

from pathlib import Path

from mlp_platform.deciders.declaration import DeciderDeclaration, DeciderError, load_deciders
from mlp_platform.evaluation.gates import GateConfig
from mlp_platform.rollout.guardrails import RolloutConfig


def gate_config(decl: DeciderDeclaration) -> GateConfig:
    try:
        return GateConfig.from_mapping(decl.gates)
    except (TypeError, ValueError) as err:
        raise DeciderError(f"{decl.source or decl.name}: gates: {err}") from None


def rollout_config(decl: DeciderDeclaration, overrides: dict | None = None) -> RolloutConfig:
    """The decider's rollout configuration, ``overrides`` (an operator's, from the settings) on top."""
    try:
        return RolloutConfig.from_dict({**decl.rollout, **(overrides or {})})
    except (TypeError, ValueError) as err:
        raise DeciderError(f"{decl.source or decl.name}: rollout: {err}") from None


def validate_decider(decl: DeciderDeclaration) -> DeciderDeclaration:
    gate_config(decl)
    rollout_config(decl)
    return decl


def validate_deciders(directory: Path) -> dict[str, DeciderDeclaration]:
    """Every declaration of ``directory``, each checked whole."""
    return {name: validate_decider(decl) for name, decl in load_deciders(directory).items()}
