"""Megatron-Core optimizer (Adam(W), optionally the distributed optimizer) and per-step LR setting."""

from megamid.config.model import ModelConfig
from megamid.config.parallel import ParallelConfig
from megamid.config.training import TrainingConfig


def build_optimizer(chunks: list, model: ModelConfig, parallel: ParallelConfig, training: TrainingConfig,
                    peak_lr: float, engine: dict = None):
    """megatron's optimizer over `chunks`; `engine`: the OptimizerConfig fields that follow the layout and
    FP8 settings (megamid.model.engine_config.optimizer_kwargs), overriding the plain ones."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = dict(
        optimizer="adam",
        lr=peak_lr,
        min_lr=0.0,
        weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        adam_eps=training.adam_eps,
        clip_grad=training.clip_grad,
        bf16=model.dtype == "bf16",
        fp16=model.dtype == "fp16",
        params_dtype=model.torch_dtype,
        initial_loss_scale=2.0 ** 16 if model.dtype == "fp16" else None,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    return get_megatron_optimizer(OptimizerConfig(**{**config, **(engine or {})}), chunks)


def set_lr(optimizer, lr: float, weight_decay: float) -> None:
    """Sets this step's LR and weight decay on every param group, honouring megatron's multipliers
    (norms and biases carry wd_mult=0), as its OptimizerParamScheduler does."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)
