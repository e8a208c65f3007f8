"""Which core attention a model gets, and the one-line description the trainer logs.

The choice is made once, when the model is built (megamid.model.builder.resolve_backends reads
MEGAMID_ATTENTION=auto|te|megamid|megatron and the layer spec), and passed here as plain strings:
  auto     TE's DotProductAttention (and TE's context parallelism) where megamid builds the TE spec
           (TE importable and CUDA present), megamid's own core attention otherwise;
  te       TE; an error where the TE spec is not in use;
  megamid  megamid's core attention (SDPA / FlexAttention, own context parallelism) in either spec;
  megatron megatron's DotProductAttention of the local spec (no context parallelism, no documents).
"""

from __future__ import annotations

import copy

from megamid.config.base import ConfigError

CHOICES = ("auto", "te", "megamid", "megatron")
# megamid's parallel.cp_comm -> megatron's TransformerConfig.cp_comm_type (what TE and megamid read)
CP_COMM_TYPE = {"allgather": "all_gather", "ring": "p2p", "p2p": "p2p", "a2a": "a2a", "a2a+p2p": "a2a+p2p"}
_CP_WORDS = {"allgather": "KV all-gather", "ring": "ring send/recv, lse merge", "p2p": "ring send/recv, lse merge",
             "a2a": "all-to-all over heads", "a2a+p2p": "all-to-all inside groups, ring across"}


def attention_backend(choice: str, spec_backend: str) -> str:
    """'te', 'megamid' or 'megatron' for the MEGAMID_ATTENTION `choice` in a model built with `spec_backend`."""
    choice = (choice or "auto").lower()
    if choice not in CHOICES:
        raise ConfigError(f"MEGAMID_ATTENTION={choice!r} is invalid: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        return "te" if spec_backend == "te" else "megamid"
    if choice == "te" and spec_backend != "te":
        raise ConfigError("MEGAMID_ATTENTION=te needs Transformer Engine's layer spec (TE importable with CUDA, "
                          "MEGAMID_SPEC=auto|te)")
    if choice == "megatron" and spec_backend != "local":
        raise ConfigError("MEGAMID_ATTENTION=megatron needs the local layer spec (MEGAMID_SPEC=local)")
    return choice


def with_core_attention(layer_spec, attention: str):
    """The layer spec with megamid's core attention where `attention` (a resolved backend) is 'megamid'."""
    if attention != "megamid":
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


def describe_attention(parallel_config, backend: str) -> str:
    """One line naming the attention path (a resolved backend) and context-parallel scheme, for the start-up log."""
    import torch

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
