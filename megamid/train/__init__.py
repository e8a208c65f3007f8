"""Training: the phase loop over megatron-core's schedules, checkpointing and resume."""
