"""The two interfaces evaluation needs: a causal language model that returns logits, and a tokenizer.

Any object with these attributes works (typing.Protocol, no base class): the Megatron-Core adapter
(`megamid.load(CKPT)` returns one), tiny test models and HF wrappers alike.
"""

from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM. Tensors go in on `device`; logits come back on any device, as float.

    Under pipeline parallelism only the last stage has logits: the adapter runs the forward on every
    rank and returns the last stage's logits on the rank(s) that call `evaluate`. Every rank that takes
    part must call `evaluate` with the same arguments: the generators are seeded, so the prompts (and
    the sequence of forwards) are identical on all ranks.
    """

    max_batch: int  # the most sequences one `logits` call may hold
    device: Union[str, torch.device]

    def logits(self, tokens: torch.LongTensor, last_n: Optional[int] = None) -> torch.Tensor:
        """[b, s] -> [b, s, vocab], or [b, last_n, vocab] (the last positions only) when last_n is given.

        last_n lets an adapter skip the output layer on long prompts where only the answer positions
        are scored; an adapter may ignore it and return all positions (evaluation slices the tail)."""
        ...

    # Optional, for shared-prefix candidate scoring (megamid.eval.scoring.candidate_logprobs):
    #   masked_logits(tokens [b, s], position_ids [b, s], allowed [b, s, s] bool, lo) -> [b, s - lo, V]
    #   takes_attention_masks: bool (False: use the plain path), max_mask_tokens: int (longest such row)


@runtime_checkable
class Tokenizer(Protocol):
    """megamid.data.tokenizer.ByteTokenizer has this shape; so do thin wrappers of HF tokenizers."""

    eod: int
    vocab_size: int

    def encode(self, text: str) -> list:
        ...

    def decode(self, ids: Sequence[int]) -> str:
        ...
