"""megamid: mid-training (annealing, data-mix shifts, staged context extension) on Megatron-Core."""

__version__ = "0.1.0"
