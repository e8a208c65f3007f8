"""Loading weights across Transformer Engine's and megatron's local layer specs.

TE modules carry `_extra_state` entries (FP8 scaling metadata, empty under BF16) that megatron-core's
sharded state dict does not always save, and that the local spec does not have: a checkpoint saved on
CPU (local spec) or converted from HF lacks them, one saved under TE has them. Megatron-LM retries a
strict load non-strictly for exactly these keys; megamid does the same, and anything else missing or
unexpected still fails, naming the keys.

    result = module.load_state_dict(state, strict=False)
    ignored = check_load_keys(result.missing_keys, result.unexpected_keys, where="base checkpoint X")
"""

from __future__ import annotations

from megamid.config.base import ConfigError

EXTRA_STATE_SUFFIX = "_extra_state"


def is_extra_state(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == EXTRA_STATE_SUFFIX


def split_extra_state(keys) -> tuple:
    """(TE extra-state keys, the other keys), order kept."""
    keys = list(keys)
    return [k for k in keys if is_extra_state(k)], [k for k in keys if not is_extra_state(k)]


def check_load_keys(missing_keys, unexpected_keys, where: str = "checkpoint", shown: int = 8) -> list:
    """The TE extra-state keys that may be ignored; ConfigError naming every other missing or unexpected key."""
    ignored_missing, missing = split_extra_state(missing_keys)
    ignored_unexpected, unexpected = split_extra_state(unexpected_keys)
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:shown])}{more})")
        raise ConfigError(f"{where} does not match the model: {'; '.join(parts)} (only Transformer Engine's "
                          f"_extra_state entries may differ between layer specs)")
    return ignored_missing + ignored_unexpected


def load_model_state(module, state: dict, where: str = "checkpoint") -> list:
    """module.load_state_dict(state) that tolerates only TE extra-state differences; returns the ignored keys."""
    result = module.load_state_dict(state, strict=False)
    return check_load_keys(result.missing_keys, result.unexpected_keys, where)


def load_sharded_tolerant(sharded_state_dict: dict, path: str, **load_kwargs) -> dict:
    """dist_checkpointing.load that skips requested TE extra-state entries the checkpoint lacks (and only
    those: any other requested key absent from `path` raises, named); keys only the checkpoint has
    (an optimizer not asked for) are left unread as before."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    # megatron's names: "unexpected" = requested but not saved, "missing" = saved but not requested
    loaded, _saved_only, requested_only = dist_checkpointing.load(
        sharded_state_dict, path, strict=StrictHandling.RETURN_ALL, **load_kwargs)
    check_load_keys(sorted(requested_only), [], where=f"checkpoint {path}")
    return loaded
