"""Checkpoint averaging ("souping" of branch anneals): the weighted mean of several megamid checkpoints.

    average_checkpoints(["runs/a/ckpt", "runs/b/ckpt"], "runs/soup", weights=[0.5, 0.5])

Inputs may be saved at any TP/PP/VPP/DP: each is loaded into one TP=1/PP=1 model built from its
saved recipe config (dist_checkpointing reshards), so this runs in a single process, which must not
have set up another parallel state. The mean is kept in fp32, one checkpoint in memory at a time
(a running weighted mean: averaging identical checkpoints returns them bit for bit). The output is a
model-only megamid checkpoint (`OUT/latest`, `OUT/iter_0000000/` + megamid.json) that a recipe can
name as `base` and that loads like any checkpoint with load_optimizer=False.
"""

import os

from megamid.config import ConfigError, ModelConfig, build
from megamid.config.model import model_differences


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


def common_model(paths: list, metas: list) -> ModelConfig:
    """The model config every checkpoint was saved with; ConfigError naming the first differing field."""
    models = []
    for path, meta in zip(paths, metas):
        saved = (meta.get("config") or {}).get("model")
        if not saved:
            raise ConfigError(f"checkpoint {path!r} has no model config in its megamid.json (config.model)")
        models.append(build(ModelConfig, saved, "model"))
    for path, model in zip(paths[1:], models[1:]):
        diff = model_differences(models[0], model)
        if diff:
            name, a, b = diff[0]
            more = f" (and {', '.join('model.' + d[0] for d in diff[1:])})" if len(diff) > 1 else ""
            raise ConfigError(f"model.{name}={b!r} in {path!r} differs from model.{name}={a!r} in {paths[0]!r}"
                              f"{more}: only checkpoints of the same model can be averaged")
    return models[0]


def _float_state(chunks: list) -> dict:
    import torch

    from megamid.model import unwrap

    return {f"{i}.{k}": v for i, c in enumerate(chunks) for k, v in unwrap(c).state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point()}


def average_checkpoints(paths: list, out_dir: str, weights=None, log=print) -> str:
    """Writes the weighted mean of the checkpoints at `paths` to `out_dir`; returns the checkpoint path."""
    import torch

    from megamid.checkpoint import dist_state as ckpt
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks
    from megamid.platform import Layout, init_model_parallel, set_seed

    if not paths:
        raise ConfigError("checkpoints=[] is invalid: give at least one checkpoint to average")
    paths = [ckpt.resolve_checkpoint(p) for p in paths]
    weights = normalised_weights(weights, len(paths))
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"out={out_dir!r} is invalid: the directory exists and is not empty; choose a new one")
    metas = [ckpt.read_state(p) for p in paths]
    model = common_model(paths, metas)

    init_model_parallel(Layout())
    set_seed(0)
    chunks = build_gpt_chunks(model, ParallelConfig())
    mean, total = None, 0.0
    for path, weight in zip(paths, weights):
        ckpt.load_checkpoint(path, chunks, None, use_distributed_optimizer=False, load_optimizer=False)
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
    return _save_model(out_dir, chunks, {"averaged_from": paths, "weights": weights}, metas[0]["config"])


def _save_model(ckpt_dir: str, chunks: list, state: dict, config: dict) -> str:
    """A model-only checkpoint (`OUT/iter_0000000`, published as `latest`) through the training save.
    `layout` is null: no RNG state is saved, so loading never restores one."""
    from megamid.checkpoint import dist_state

    return dist_state.save_checkpoint(ckpt_dir, 0, chunks, None, state, config, use_distributed_optimizer=False,
                                      record_layout=False)
