"""Config dataclasses, one per concern, validated at construction; YAML loading with overrides."""

from megamid.config.base import ConfigError
from megamid.config.loader import apply_overrides, build, load_yaml, to_dict
from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.eval import EvalConfig
from megamid.config.recipe import PhaseConfig, RecipeConfig
from megamid.config.training import CheckpointConfig, TrainingConfig


def load_recipe(path: str, overrides=()) -> RecipeConfig:
    """The recipe at `path` with `key.sub=value` overrides applied, validated."""
    return build(RecipeConfig, apply_overrides(load_yaml(path), list(overrides)))


__all__ = ["CheckpointConfig", "ConfigError", "EvalConfig", "ModelConfig", "ParallelConfig", "PhaseConfig",
           "RecipeConfig", "TrainingConfig", "apply_overrides", "build", "load_recipe", "load_yaml",
           "to_dict"]
