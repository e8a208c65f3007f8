"""Optimisation: LR schedules as pure functions (schedules.py); nothing here imports megatron."""

from megamid.optim.schedules import DECAY_STYLES, STYLES, LRSchedule, decay_coefficient, lr_at

__all__ = ["DECAY_STYLES", "STYLES", "LRSchedule", "decay_coefficient", "lr_at"]
