"""megamid: mid-training (annealing, data-mix shifts, staged context extension) on Megatron-Core."""

__version__ = "0.1.0"


def load(path: str, tp: int = 1, pp: int = 1, max_batch: int = 4):
    """(model, tokenizer) from any megamid checkpoint (converted base, training step, branch, soup) at
    TP x PP; see megamid.checkpoint.loading. Imports torch and megatron only when called."""
    from megamid.checkpoint.loading import load as _load

    return _load(path, tp=tp, pp=pp, max_batch=max_batch)
