"""MixtureDataset: the data one training phase reads (the seam between megamid.data and the trainer).

    ds = MixtureDataset(data_config, seq_len=4096, num_samples=phase_samples, eod=tok.eod,
                        pad=tok.pad, vocab_size=model_vocab, seed=data_config.seed,
                        start_tokens=checkpoint.get("data_consumed", {}))
    batch = ds.get_batch(step * global_batch, global_batch)   # the trainer slices it by DP rank
    ...
    checkpoint["data_consumed"] = ds.consumed_per_source(samples_done_in_phase)

Contract:
- Deterministic from (config, seq_len, num_samples, seed, start_tokens): resuming a phase is
  rebuilding the same object and reading on from the sample index where training stopped.
- Each stream (phase or replay source) is read as one endless stream (token_stream.py). Sample i of
  the phase is the window [o, o + seq_len + 1) of stream s(i), with
  o = start_tokens[name] + k(i) * seq_len, k(i) = how many earlier samples of the phase came from
  s(i). s(i) and k(i) come from the blended index (mixture_index.py) built at construction for the
  phase's piecewise-linear shares (mixture_plan.py). So weights may change between and within
  phases and no stream ever skips or repeats a token (before its epoch is used up).
- `consumed_per_source(n)` -> {name: stream offset in tokens after the phase's first n samples},
  merged over `start_tokens` (streams not in this phase pass through unchanged). Save it with every
  checkpoint; pass it as `start_tokens` to the next phase (any seq_len) or to a resumed run of a
  later phase. Keep `seed` the same for a source across phases: the stream's permutation comes from it.
- Samples: tokens and labels (tokens shifted by one) int64 [seq_len], loss_mask float32, position_ids
  int64, source (stream id, index into `names`). A source with `loss_mask` scores only the labels
  its mask marks (megamid.data.token_stream). With `config.pack`, positions restart after every
  EOD (megamid.kernels.doc_positions), the loss at an EOD (whose label is the next document's first
  token) is masked, and get_batch adds cu_seqlens (int32, over the batch's rows concatenated) for
  document-masked attention; without it positions run 0..seq_len-1 (GPTDataset's default).
"""

import numpy as np
import torch

from megamid.config.base import ConfigError, fail
from megamid.config.data import DataConfig
from megamid.data import DataError
from megamid.data.mixture_index import INDEX_BYTES_PER_SAMPLE, build_mixture_index
from megamid.data.mixture_plan import knot_samples, knot_shares, stream_names
from megamid.data.token_stream import TokenStream
from megamid.kernels.doc_positions import doc_positions
from megamid.platform.host import format_bytes, host_memory_bytes


def _check_int(field: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        fail(field, value, f"expected an integer >= {minimum}")
    return int(value)


class MixtureDataset(torch.utils.data.Dataset):
    """Random access to one phase's blended samples: `ds[i]`, `get_batch(start, count)`."""

    def __init__(self, config: DataConfig, seq_len: int, num_samples: int, eod: int, pad: int,
                 vocab_size: int, seed=None, start_tokens=None):
        if not isinstance(config, DataConfig):
            raise ConfigError(f"config={type(config).__name__} is invalid: expected a DataConfig "
                              "(DataConfig.from_dict(recipe['data']))")
        self.config = config
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.num_samples = _check_int("num_samples", num_samples, 0)
        self.vocab_size = _check_int("vocab_size", vocab_size, 1)
        self.eod = _check_int("eod", eod, 0)
        self.pad = _check_int("pad", pad, 0)
        for field, value in (("eod", self.eod), ("pad", self.pad)):
            if value >= self.vocab_size:
                fail(field, value, f"must be a token id below vocab_size={self.vocab_size}")
        self.seed = config.seed if seed is None else _check_int("seed", seed, 0)
        self.start_tokens = dict(start_tokens or {})
        for name, value in self.start_tokens.items():
            _check_int(f"start_tokens[{name!r}]", value, 0)

        self._check_index_fits()
        self.names = stream_names(config)
        self.shares = knot_shares(config)  # [2, streams]: first and last sample of the phase
        sources = config.all_sources()
        # streams that never get a sample are not opened: a zero-weight source may be absent
        self.streams = [
            TokenStream(s.name, s.prefix, self.seed, self.vocab_size, s.upsample_long, config.long_threshold_for(s),
                        s.mask_prefix)
            if self.shares[:, j].max() > 0 else None
            for j, s in enumerate(sources)
        ]
        self.offsets = np.array([self.start_tokens.get(n, 0) for n in self.names], dtype=np.int64)
        self.source_index, self.source_sample_index, self.counts = build_mixture_index(
            knot_samples(self.num_samples), self.shares, self.num_samples)

    def _check_index_fits(self) -> None:
        """Refuse before allocating: the blended index lives in host RAM on every rank."""
        need, host = self.num_samples * INDEX_BYTES_PER_SAMPLE, host_memory_bytes()
        if host and need > host:
            raise DataError(f"num_samples={self.num_samples:,} (the phase's steps x global_batch_size) is too many: "
                            f"its blended sample index needs ~{format_bytes(need)} ({INDEX_BYTES_PER_SAMPLE} bytes per "
                            f"sample) in host memory, over this host's {format_bytes(host)}; lower the phase's steps")

    def __len__(self) -> int:
        return self.num_samples

    def _window(self, i: int):
        """(tokens, loss mask or None) of sample i: seq_len + 1 of each; None: every token scored."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} is outside the phase's {self.num_samples} samples")
        s = int(self.source_index[i])
        offset = int(self.offsets[s]) + int(self.source_sample_index[i]) * self.seq_len
        window = self.streams[s].read(offset, self.seq_len + 1)
        if window.max() >= self.vocab_size:  # cheap guard; the full check ran at construction
            raise DataError(f"source {self.names[s]!r}: token id {int(window.max())} beyond the model's vocab "
                            f"(valid ids: 0..{self.vocab_size - 1})")
        return window, self.streams[s].read_mask(offset, self.seq_len + 1)

    def _fields(self, pairs: list, sources: np.ndarray) -> dict:
        """The fields of the stacked (tokens, mask) windows of _window."""
        windows = np.stack([w for w, _ in pairs])
        tokens = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
        labels = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
        loss_mask = (labels != self.pad).to(torch.float32)
        if any(m is not None for _, m in pairs):  # loss_mask sources: only their marked labels are scored
            ones = np.ones(self.seq_len + 1, dtype=np.float32)
            loss_mask *= torch.from_numpy(np.stack([ones if m is None else m for _, m in pairs])[:, 1:])
        if self.config.pack:
            position_ids, cu_seqlens = doc_positions(tokens, self.eod)
            loss_mask[tokens == self.eod] = 0.0  # the label after EOD belongs to another document
        else:
            position_ids = torch.arange(self.seq_len, dtype=torch.int64).expand_as(tokens).contiguous()
            cu_seqlens = None
        out = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
               "source": torch.from_numpy(sources.astype(np.int64))}
        if cu_seqlens is not None:
            out["cu_seqlens"] = cu_seqlens
        return out

    def __getitem__(self, i: int) -> dict:
        """One sample; fixed shapes only (default_collate stacks them; cu_seqlens via get_batch)."""
        i = int(i)
        batch = self._fields([self._window(i)], self.source_index[i:i + 1])
        return {k: v[0] for k, v in batch.items() if k != "cu_seqlens"}

    def get_batch(self, start: int, count: int) -> dict:
        """Samples start .. start+count-1 stacked: [count, seq_len] fields, source [count], and with
        pack, cu_seqlens int32 [documents + 1] over the rows concatenated (row r starts at r * seq_len)."""
        pairs = [self._window(i) for i in range(int(start), int(start) + int(count))]
        return self._fields(pairs, self.source_index[start:start + count])

    def consumed_samples_per_source(self, num_samples: int) -> dict:
        """{name: samples of this phase drawn from it among the first num_samples}."""
        n = _check_int("num_samples", num_samples, 0)
        if n > self.num_samples:
            fail("num_samples", n, f"at most the phase's {self.num_samples} samples")
        counts = np.bincount(self.source_index[:n], minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, counts)}

    def consumed_per_source(self, num_samples: int) -> dict:
        """{name: stream offset in tokens} after the phase's first num_samples, over start_tokens."""
        out = dict(self.start_tokens)
        for j, (name, c) in enumerate(self.consumed_samples_per_source(num_samples).items()):
            out[name] = int(self.offsets[j]) + c * self.seq_len
        return out

    def realised_shares(self, num_samples=None) -> dict:
        """{name: share of the first num_samples (default: all)}, to log next to the planned shares."""
        n = self.num_samples if num_samples is None else num_samples
        counts = self.consumed_samples_per_source(n)
        return {name: c / max(n, 1) for name, c in counts.items()}
