"""Any megamid checkpoint as a model ready for logits and generation: `megamid.load(path)`.

    model, tokenizer = megamid.load("runs/x/ckpt")          # a run's checkpoint dir (its `latest`)
    model, tokenizer = megamid.load("bases/llama", tp=2)    # under torchrun: TP=2 (world divisible by tp x pp)

Works for every kind of checkpoint (a converted HF base, a training or branch step, a soup): it reads
the checkpoint's record (megamid.checkpoint.record) for the model shape, the rope the weights were
trained with and the tokenizer, builds the GPTModel chunks for this rank under TP x PP (the remaining
ranks are data-parallel replicas), and loads the weights; dist_checkpointing reshards whatever layout
they were written in. The model is a megamid.model.inference.MegatronLM (`logits`, `token_logprobs`,
the eval protocol); `model.record` is the record and `tokenizer.special_ids` its {bos, eos, pad}.
Every rank of the process group must call it.
"""

from __future__ import annotations

import os

from megamid.checkpoint.checkpointer import resolve as resolve_checkpoint
from megamid.checkpoint.record import load_record, special_ids_of
from megamid.config.base import ConfigError
from megamid.rope import model_rope_scaling


def load_model_weights(path: str, chunks: list) -> None:
    """Loads only the model weights of checkpoint `path` into `chunks` (any saved layout reshards)."""
    from megatron.core import dist_checkpointing

    from megamid.model import unwrap

    names = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    sharded = {name: unwrap(c).sharded_state_dict() for name, c in zip(names, chunks)}
    loaded = dist_checkpointing.load(sharded, path)
    for name, c in zip(names, chunks):
        unwrap(c).load_state_dict(loaded[name])


def _tokenizer(record: dict, path: str):
    from megamid.data.tokenizer_files import load_tokenizer

    spec = record["tokenizer"]
    if spec != "byte" and not os.path.exists(spec):
        raise FileNotFoundError(f"{path}: its tokenizer {spec!r} (megamid.json) is not there; the checkpoint "
                                "was moved without it, or written on another machine")
    tokenizer = load_tokenizer(spec)
    ids = {k: v for k, v in special_ids_of(tokenizer).items()}
    ids.update({k: v for k, v in record["special_ids"].items() if v is not None})
    tokenizer.special_ids = ids
    return tokenizer


def _ensure_layout(tp: int, pp: int) -> None:
    """Megatron's parallel state for TP x PP; a second load at the same layout (a --baseline) keeps it,
    since re-initialising would pull the groups out from under the first model."""
    from megatron.core import parallel_state as ps

    from megamid.platform import Layout, init_model_parallel

    if ps.model_parallel_is_initialized():
        current = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                   ps.get_context_parallel_world_size())
        if current == (tp, pp, 1):
            return
    init_model_parallel(Layout(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp))


def load(path: str, tp: int = 1, pp: int = 1, max_batch: int = 4, seed: int = 0):
    """(MegatronLM, tokenizer) for the checkpoint at `path` (see the module docstring)."""
    from megamid.config import ModelConfig, ParallelConfig, build
    from megamid.model import build_gpt_chunks
    from megamid.model.builder import set_rope
    from megamid.model.inference import MegatronLM
    from megamid.platform import init_process_group, set_seed

    for name, value in (("tp", tp), ("pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} is invalid: a positive integer")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ckpt = resolve_checkpoint(path, "checkpoint")
    record = load_record(ckpt)
    model_cfg = build(ModelConfig, record["model"], "model")
    model_rope_scaling(model_cfg, record["rope"], f"{ckpt}: rope")
    tokenizer = _tokenizer(record, ckpt)
    parallel = build(ParallelConfig, {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp},
                     "parallel")
    init_process_group()
    _ensure_layout(tp, pp)
    set_seed(seed)
    chunks = build_gpt_chunks(model_cfg, parallel)
    for chunk in chunks:
        set_rope(chunk, record["rope"])
    load_model_weights(ckpt, chunks)
    model = MegatronLM(chunks, max_batch=max_batch)
    model.record = record
    model.path = ckpt
    return model, tokenizer


__all__ = ["load", "load_model_weights"]
