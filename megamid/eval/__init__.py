"""Long-context evaluation: passkey, needle grid, RULER-style tasks, perplexity by position, and the
short-context regression check, on any model that follows `megamid.eval.protocol.LanguageModel`."""

from megamid.eval.protocol import LanguageModel, Tokenizer
from megamid.eval.runner import TASK_NAMES, evaluate

__all__ = ["LanguageModel", "TASK_NAMES", "Tokenizer", "evaluate"]
