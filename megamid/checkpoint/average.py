"""Checkpoint averaging ("souping" of branch anneals): the weighted mean of several megamid checkpoints.

    average_checkpoints(["runs/a/ckpt", "runs/b/ckpt"], "runs/soup", weights=[0.5, 0.5])

Inputs may be saved at any TP/PP/VPP/DP: each is loaded into one TP=1/PP=1 model built from its
record (megamid.checkpoint.record; dist_checkpointing reshards), so this runs in a single process, which
must not have set up another parallel state. Inputs must be the same model (shapes) trained with the same
rope and tokenizer; the error names both checkpoints and values. The mean is kept in fp32, one checkpoint
in memory at a time (a running weighted mean: averaging identical checkpoints returns them bit for bit). The output is
a model-only megamid checkpoint (`OUT/latest`, `OUT/iter_0000000/` + megamid.json) whose record keeps
the inputs' model, rope, tokenizer and special ids (provenance: average, sources, weights): a recipe can
name it as `base`, `megamid eval` and the exporter read it like any checkpoint.
"""

import os

from megamid.checkpoint.checkpointer import resolve as resolve_checkpoint
from megamid.checkpoint.record import checkpoint_record, load_record
from megamid.config import ConfigError, ModelConfig, build
from megamid.config.model import model_differences
from megamid.rope import model_rope_scaling


def normalised_weights(weights, count: int) -> list:
    """`weights` (default: equal) as floats summing to 1; errors name --weights."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ConfigError(f"weights={weights} is invalid: expected {count} values, one per checkpoint")
    if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights={weights} is invalid: expected numbers >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def common_model(paths: list, records: list) -> ModelConfig:
    """The model every checkpoint holds; ConfigError naming the first differing field and both values."""
    models = [build(ModelConfig, record["model"], "model") for record in records]
    for path, model in zip(paths[1:], models[1:]):
        # ropes are compared by common_rope; the RoPE path a run used does not change its weights
        diff = [d for d in model_differences(models[0], model) if d[0] not in ("rope", "rope_fusion")]
        if diff:
            name, a, b = diff[0]
            more = f" (and {', '.join('model.' + d[0] for d in diff[1:])})" if len(diff) > 1 else ""
            raise ConfigError(f"model.{name}={b!r} in {path!r} differs from model.{name}={a!r} in {paths[0]!r}"
                              f"{more}: only checkpoints of the same model can be averaged")
    return models[0]


def common_rope(paths: list, records: list, model: ModelConfig) -> dict:
    """The rope every checkpoint was trained with (compared resolved: `pi` equals `linear`)."""
    ropes = [model_rope_scaling(model, record["rope"], f"{path}: rope") for path, record in zip(paths, records)]
    for path, record, rope in zip(paths[1:], records[1:], ropes[1:]):
        if rope != ropes[0]:
            raise ConfigError(f"rope={record['rope']!r} in {path!r} differs from rope={records[0]['rope']!r} in "
                              f"{paths[0]!r}: checkpoints trained with different ropes do not average into a "
                              "model that works with either")
    return dict(records[0]["rope"])


def _same_tokenizer_file(a: str, b: str) -> bool:
    import filecmp

    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def common_tokenizer(paths: list, records: list, log=print) -> None:
    """Refuses checkpoints whose tokenizers provably differ: other special ids, `byte` against a file, or
    two tokenizer files of different contents (the same vocab size does not make the same tokens). Two
    names that cannot be compared from here (files not found) are logged and allowed."""
    first, base = records[0], paths[0]
    for path, record in zip(paths[1:], records[1:]):
        if record["special_ids"] != first["special_ids"]:
            raise ConfigError(f"special_ids={record['special_ids']} in {path!r} differs from "
                              f"special_ids={first['special_ids']} in {base!r}: only checkpoints with the same "
                              "tokenizer can be averaged")
        a, b = first["tokenizer"], record["tokenizer"]
        if a == b or _same_tokenizer_file(a, b):
            continue
        if "byte" in (a, b) or (os.path.isfile(a) and os.path.isfile(b)):
            raise ConfigError(f"tokenizer={b!r} in {path!r} differs from tokenizer={a!r} in {base!r}: only "
                              "checkpoints with the same tokenizer can be averaged")
        log(f"note: tokenizer {b!r} of {path} and {a!r} of {base} are named differently and cannot be compared "
            "from here (files not found); averaging as the same tokenizer")


def _float_state(chunks: list) -> dict:
    import torch

    from megamid.model import unwrap

    return {f"{i}.{k}": v for i, c in enumerate(chunks) for k, v in unwrap(c).state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point()}


def average_checkpoints(paths: list, out_dir: str, weights=None, log=print) -> str:
    """Writes the weighted mean of the checkpoints at `paths` to `out_dir`; returns the checkpoint path."""
    import torch

    from megamid.checkpoint.loading import load_model_weights
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks
    from megamid.platform import Layout, init_model_parallel, set_seed

    if not paths:
        raise ConfigError("checkpoints=[] is invalid: give at least one checkpoint to average")
    paths = [resolve_checkpoint(p) for p in paths]
    weights = normalised_weights(weights, len(paths))
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"out={out_dir!r} is invalid: the directory exists and is not empty; choose a new one")
    records = [load_record(p) for p in paths]
    model = common_model(paths, records)
    rope = common_rope(paths, records, model)
    common_tokenizer(paths, records, log)

    init_model_parallel(Layout())
    set_seed(0)
    chunks = build_gpt_chunks(model, ParallelConfig())
    mean, total = None, 0.0
    for path, weight in zip(paths, weights):
        load_model_weights(path, chunks)
        state = _float_state(chunks)
        if mean is None:
            mean = {k: v.detach().to(torch.float32, copy=True) for k, v in state.items()}
        elif weight > 0:
            # running mean: mean += w / W * (x - mean); x == mean leaves it exactly unchanged
            for k, v in state.items():
                mean[k].lerp_(v.detach().float(), weight / (total + weight))
        total += weight
        log(f"averaged {path} (weight {weight:.4g})")
    with torch.no_grad():
        for k, v in _float_state(chunks).items():
            v.copy_(mean[k])
    del mean
    first = records[0]
    record = checkpoint_record(model, first["tokenizer"], first["special_ids"], rope,
                               {"kind": "average", "sources": paths, "weights": weights}, first.get("generation"))
    meta = {"step": 0, "layout": None, "state": {"averaged_from": paths, "weights": weights},
            "config": {"model": record["model"], "tokenizer": record["tokenizer"]}, **record}
    return _save_model(out_dir, chunks, meta)


def _save_model(ckpt_dir: str, chunks: list, meta: dict) -> str:
    """A model-only checkpoint (`OUT/iter_0000000`, published as `latest`) through the training save.
    `layout` is null: no RNG state is saved, so loading never restores one."""
    from megamid.checkpoint import dist_state

    record = {k: v for k, v in meta.items() if k not in ("step", "layout", "state", "config")}
    return dist_state.save_checkpoint(ckpt_dir, 0, chunks, None, meta["state"], meta["config"],
                                      use_distributed_optimizer=False, record_layout=False, record=record)
