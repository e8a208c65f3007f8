"""Which core attention a model gets, and the one-line description the trainer logs.

MEGAMID_ATTENTION=auto|te|megamid|megatron (read at each call):
  auto     TE's DotProductAttention (and TE's context parallelism) where megamid builds the TE spec
           (TE importable and CUDA present), megamid's own core attention otherwise;
  te       TE; an error where the TE spec is not in use;
  megamid  megamid's core attention (SDPA / FlexAttention, own context parallelism) in either spec;
  megatron megatron's DotProductAttention of the local spec (no context parallelism, no documents).
"""

from __future__ import annotations

import copy
import os

from megamid.config.base import ConfigError

CHOICES = ("auto", "te", "megamid", "megatron")
# megamid's parallel.cp_comm -> megatron's TransformerConfig.cp_comm_type (what TE and megamid read)
CP_COMM_TYPE = {"allgather": "all_gather", "ring": "p2p", "p2p": "p2p", "a2a": "a2a", "a2a+p2p": "a2a+p2p"}
_CP_WORDS = {"allgather": "KV all-gather", "ring": "ring send/recv, lse merge", "p2p": "ring send/recv, lse merge",
             "a2a": "all-to-all over heads", "a2a+p2p": "all-to-all inside groups, ring across"}


def _spec_backend() -> str:
    from megamid.model.builder import spec_backend

    return spec_backend()


def attention_backend(spec_backend: str | None = None) -> str:
    """'te', 'megamid' or 'megatron' for a model built with `spec_backend` ('te' | 'local')."""
    choice = os.environ.get("MEGAMID_ATTENTION", "auto").lower()
    if choice not in CHOICES:
        raise ConfigError(f"MEGAMID_ATTENTION={choice!r} is invalid: expected one of {', '.join(CHOICES)}")
    spec = _spec_backend() if spec_backend is None else spec_backend
    if choice == "auto":
        return "te" if spec == "te" else "megamid"
    if choice == "te" and spec != "te":
        raise ConfigError("MEGAMID_ATTENTION=te needs Transformer Engine's layer spec (TE importable with CUDA, "
                          "MEGAMID_SPEC=auto|te)")
    if choice == "megatron" and spec != "local":
        raise ConfigError("MEGAMID_ATTENTION=megatron needs the local layer spec (MEGAMID_SPEC=local)")
    return choice


def with_core_attention(layer_spec, spec_backend: str):
    """The layer spec with its self-attention's core_attention chosen by attention_backend()."""
    backend = attention_backend(spec_backend)
    if backend != "megamid":
        return layer_spec
    from megamid.attention.core_attention import MegamidCoreAttention

    spec = copy.deepcopy(layer_spec)
    spec.submodules.self_attention.submodules.core_attention = MegamidCoreAttention
    return spec


def _megamid_kernels(cuda: bool, cp: int) -> str:
    if cp > 1:
        return "FlexAttention blocks with log-sum-exp" if cuda else "masked-softmax blocks with log-sum-exp (CPU)"
    return ("SDPA flash/efficient/cuDNN, FlexAttention document masks" if cuda
            else "SDPA math (CPU), per-document SDPA for packed rows")


def describe_attention(parallel_config, spec_backend: str | None = None) -> str:
    """One line naming the attention path and context-parallel scheme, for the start-up log."""
    import torch

    backend = attention_backend(spec_backend)
    cp = parallel_config.context_parallel_size
    cp_part = (f"context parallel {cp} ({parallel_config.cp_comm}: "
               f"{_CP_WORDS[parallel_config.cp_comm]}, "
               "dual-chunk load balance)" if cp > 1 else "no context parallelism")
    if backend == "te":
        return (f"attention: Transformer Engine DotProductAttention, {cp_part}"
                + (f", cp_comm_type={CP_COMM_TYPE[parallel_config.cp_comm]}" if cp > 1 else ""))
    if backend == "megatron":
        return f"attention: megatron DotProductAttention (unfused softmax), {cp_part}"
    return f"attention: megamid core attention ({_megamid_kernels(torch.cuda.is_available(), cp)}), {cp_part}"


__all__ = ["CHOICES", "CP_COMM_TYPE", "attention_backend", "describe_attention", "with_core_attention"]
