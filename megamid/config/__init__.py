"""Config dataclasses, one per concern, validated at construction; YAML loading with overrides."""

from megamid.config.base import ConfigError

__all__ = ["ConfigError"]
