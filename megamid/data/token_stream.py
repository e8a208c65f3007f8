"""One source as an endless token stream: its documents in a seeded permutation, epoch after epoch.

A position in the stream is a token offset. Epoch e is the permutation drawn from
(seed, crc32(name), e) of the source's documents, with documents of at least the long threshold
repeated `upsample_long` times (a fractional part is a per-document coin flip drawn once from
(seed, name), so every epoch has the same length). The same (name, prefix, seed) gives the same
stream in every phase, which is what makes consumed token offsets carry over between phases
without repeating or skipping a token; samples repeat only after a whole epoch has been consumed.

Files are read through megatron-core's IndexedDataset; a sequence of the .idx is one document
(`megamid data prepare` writes one per document, each ending with EOD). A source with a loss mask has
a sidecar pair (PREFIX.lossmask) of one 0/1 uint8 per token, the same documents: `read_mask` reads it
along the same permutation as `read`.
"""

import json
import os
import zlib
from collections import OrderedDict

import numpy as np

from megamid.data import DataError
from megamid.data.indexed_files import check_indexed_pair

EPOCH_CACHE = 4  # epochs whose permutation is kept; readers move forward, so a few suffice


def stats_path(prefix: str) -> str:
    return prefix + ".stats.json"


class TokenStream:
    """Read windows of a source's token stream: `read(offset_tokens, length)`."""

    def __init__(self, name: str, prefix: str, seed: int, vocab_size: int, upsample_long: float = 1.0,
                 long_threshold_tokens=None, mask_prefix=None):
        self.name, self.prefix, self.seed = name, prefix, int(seed)
        self.dataset = self._open(prefix)
        self.lengths = np.asarray(self.dataset.index.sequence_lengths, dtype=np.int64)
        if len(self.lengths) == 0 or self.lengths.sum() == 0:
            raise DataError(f"source {name!r}: {prefix} holds no tokens ({len(self.lengths)} documents); "
                            "a source needs at least one non-empty document, or remove it from the mix")
        self._check_vocab(vocab_size)
        self.mask = self._open_mask(mask_prefix) if mask_prefix else None
        self.copies = self._copies(upsample_long, long_threshold_tokens)
        self.epoch_tokens = int((self.lengths * self.copies).sum())
        self._epochs = OrderedDict()

    def _open(self, prefix: str):
        info = check_indexed_pair(prefix, f"source {self.name!r}")  # megatron then never fails on them
        if info["sequences"] == 0 or os.path.getsize(prefix + ".bin") == 0:  # megatron cannot mmap it
            raise DataError(f"source {self.name!r}: {prefix}.bin holds no tokens; a source needs "
                            "at least one non-empty document, or remove it from the mix")
        from megatron.core.datasets.indexed_dataset import IndexedDataset  # heavy import: only when reading

        return IndexedDataset(prefix, mmap=True)

    def _open_mask(self, mask_prefix: str):
        """The loss-mask sidecar: its documents must have the token documents' lengths, its values 0/1."""
        mask = self._open(mask_prefix)
        lengths = np.asarray(mask.index.sequence_lengths, dtype=np.int64)
        if len(lengths) != len(self.lengths) or np.any(lengths != self.lengths):
            first = next((i for i in range(min(len(lengths), len(self.lengths))) if lengths[i] != self.lengths[i]),
                         min(len(lengths), len(self.lengths)))
            raise DataError(f"source {self.name!r}: the loss mask {mask_prefix}.bin/.idx does not match {self.prefix}: "
                            f"{len(lengths)} documents vs {len(self.lengths)}, first difference at document {first}; "
                            "write the tokens and the mask together (`megamid data prepare --prompt-key`, "
                            "`megamid data synthetic`)")
        values = np.memmap(mask_prefix + ".bin", dtype=mask.index.dtype, mode="r")
        if mask.index.dtype != np.uint8 or values.max() > 1:
            raise DataError(f"source {self.name!r}: the loss mask {mask_prefix}.bin must hold uint8 0/1 values, "
                            f"found {np.dtype(mask.index.dtype).name} up to {int(values.max())}")
        return mask

    def _check_vocab(self, vocab_size: int) -> None:
        """Token ids must be < the model's vocab: from the prepare stats when present, else one scan."""
        max_id = None
        if os.path.isfile(stats_path(self.prefix)):
            with open(stats_path(self.prefix)) as f:
                max_id = json.load(f).get("total", {}).get("max_token_id")
        if max_id is None:
            data = np.memmap(self.prefix + ".bin", dtype=self.dataset.index.dtype, mode="r")
            max_id = max((int(data[i:i + (1 << 24)].max()) for i in range(0, len(data), 1 << 24)), default=0)
        if max_id >= vocab_size:
            raise DataError(f"source {self.name!r}: token id {max_id} in {self.prefix}.bin is beyond the model's "
                            f"vocab (valid ids: 0..{vocab_size - 1}); prepare it with the model's tokenizer")

    def _copies(self, factor: float, threshold) -> np.ndarray:
        copies = np.ones(len(self.lengths), dtype=np.int64)
        if threshold is None or factor == 1.0:
            return copies
        long = self.lengths >= threshold
        whole, frac = int(factor), factor - int(factor)
        rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), 0xC0FFEE])
        extra = rng.random(len(self.lengths)) < frac
        copies[long] = whole + extra[long]
        return copies

    def epoch(self, e: int):
        """(document order, cumulative token offsets [docs + 1]) of epoch e."""
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), e])
            order = rng.permutation(np.repeat(np.arange(len(self.lengths)), self.copies))
            cum = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(self.lengths[order], out=cum[1:])
            self._epochs[e] = (order, cum)
            if len(self._epochs) > EPOCH_CACHE:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def read(self, offset: int, length: int) -> np.ndarray:
        """`length` tokens (int64) from stream offset `offset`, crossing documents and epochs."""
        return self._read(self.dataset, offset, length)

    def read_mask(self, offset: int, length: int):
        """The loss mask (float32 0/1) of the same tokens as read(offset, length); None without a mask."""
        if self.mask is None:
            return None
        return self._read(self.mask, offset, length).astype(np.float32)

    def _read(self, dataset, offset: int, length: int) -> np.ndarray:
        out = np.empty(length, dtype=np.int64)
        filled = 0
        while filled < length:
            e, pos = divmod(offset + filled, self.epoch_tokens)
            order, cum = self.epoch(e)
            d = int(np.searchsorted(cum, pos, side="right")) - 1
            within = pos - int(cum[d])
            take = min(length - filled, int(cum[d + 1]) - pos)
            out[filled:filled + take] = dataset.get(int(order[d]), offset=within, length=take)
            filled += take
        return out
