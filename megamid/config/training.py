"""Batch, length, budget and optimizer settings of a training run, and its checkpointing."""

from dataclasses import dataclass, field
from typing import Optional

from megamid.config.base import check_choice, check_divisible, check_positive, check_range, fail


@dataclass(frozen=True)
class TrainingConfig:
    global_batch_size: int
    micro_batch_size: int
    seq_len: int
    train_steps: int
    lr: dict = field(default_factory=lambda: {"style": "constant", "peak_lr": 3e-4})
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    log_interval: int = 1
    recompute: str = "none"           # none | full | selective
    max_consecutive_skips: int = 3    # steps in a row with a non-finite loss/gradients before the run stops

    def __post_init__(self):
        for name in ("global_batch_size", "micro_batch_size", "seq_len", "train_steps", "log_interval"):
            check_positive(f"training.{name}", getattr(self, name))
        check_divisible("training.global_batch_size", self.global_batch_size, self.micro_batch_size,
                        "training.micro_batch_size")
        check_positive("training.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("training.clip_grad", self.clip_grad, allow_zero=True)
        for name in ("adam_beta1", "adam_beta2"):
            check_range(f"training.{name}", getattr(self, name), 0.0, 1.0)
        check_positive("training.adam_eps", self.adam_eps)
        check_positive("training.seed", self.seed, allow_zero=True)
        check_choice("training.recompute", self.recompute, ("none", "full", "selective"))
        if isinstance(self.max_consecutive_skips, bool) or not isinstance(self.max_consecutive_skips, int) \
                or self.max_consecutive_skips < 0:
            fail("training.max_consecutive_skips", self.max_consecutive_skips, "expected an integer >= 0")
        if not isinstance(self.lr, dict):
            fail("training.lr", self.lr, "a mapping, e.g. {style: cosine, peak_lr: 3e-4, warmup_steps: 10}")


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = "runs/checkpoints"
    save_interval: Optional[int] = None    # steps between saves; the end of training always saves
    keep_last: Optional[int] = None        # keep the newest N checkpoints (null: keep all)
    load: str = "auto"                     # auto: resume from dir/latest if present; none; or a checkpoint path
    format: str = "torch_dist"
    save_final: bool = True                # save at the end of every phase
    on_corrupt: str = "fail"               # `latest` does not verify: fail, or fall back to the previous good one

    def __post_init__(self):
        if self.save_interval is not None:
            check_positive("checkpoint.save_interval", self.save_interval)
        if self.keep_last is not None:
            check_positive("checkpoint.keep_last", self.keep_last)
        check_choice("checkpoint.format", self.format, ("torch_dist",))
        check_choice("checkpoint.on_corrupt", self.on_corrupt, ("fail", "previous"))
        if not self.dir:
            fail("checkpoint.dir", self.dir, "a directory path")
