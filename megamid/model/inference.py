"""Megatron-Core model chunks as a `megamid.eval.protocol.LanguageModel`.

`MegatronLM(chunks)` runs a forward-only pass through megatron's pipeline schedule under whatever
TP/PP(/VPP)/CP layout the chunks were built for (the trainer's own chunks, DDP-wrapped or not). The last
pipeline stage gathers the vocab-parallel logits across TP (or computes per-token log-probs with
megatron's vocab-parallel cross entropy, which never builds [b, s, V] at all), then broadcasts them
over the pipeline group (after gathering context-parallel shards back into sequence order), so every
rank returns the same tensor. Every rank must make the same calls.

Loading a checkpoint into one is `megamid.load(CKPT)` (megamid.checkpoint.loading).
"""

import contextlib
from functools import partial
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from megamid.platform import device


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch.get("labels"))
    return output, partial(_last_stage_output, batch["keep"])


def _last_stage_output(keep: Tuple[int, int, bool], output_tensor: torch.Tensor, non_loss_data: bool = False):
    """On the last stage: positions [lo, hi) of [b, s, V/tp] logits gathered over TP, or of [b, s] losses."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    lo, hi, is_logits = keep
    out = output_tensor[:, lo:hi]
    if is_logits:
        out = gather_from_tensor_model_parallel_region(out.contiguous())
    return out.float()


def _gather_context_parallel(local: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[b, seq_len / cp, ...] shards of the CP ranks (dual-chunk layout) -> [b, seq_len, ...] in order."""
    from megatron.core import parallel_state as ps

    from megamid.rope import cp_shard_positions

    cp, group = ps.get_context_parallel_world_size(), ps.get_context_parallel_group()
    shards = [torch.empty_like(local) for _ in range(cp)]
    dist.all_gather(shards, local, group=group)
    full = local.new_empty((local.shape[0], seq_len) + tuple(local.shape[2:]))
    for rank, shard in enumerate(shards):
        full[:, cp_shard_positions(seq_len, cp, rank, device=local.device)] = shard
    return full


class MegatronLM:
    """LanguageModel over megatron GPTModel chunks (this rank's virtual stages, in order).

    max_batch: sequences per forward (and candidates per shared-prefix row); positions are 0..s-1 unless
    given (megamid's models take RoPE from position_ids). max_mask_tokens: the longest row masked_logits
    is used for by shared-prefix scoring (its [L, L] bool mask costs L^2 bytes)."""

    def __init__(self, chunks: list, max_batch: int = 4, max_mask_tokens: int = 16384):
        from megamid.model import unwrap

        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} is invalid: must be >= 1")
        self.chunks = list(chunks)
        self.max_batch = int(max_batch)
        self.max_mask_tokens = int(max_mask_tokens)
        self.device = device()
        gpt = unwrap(self.chunks[-1])
        self.config = gpt.config
        self.vocab_size = gpt.vocab_size

    # ---- LanguageModel ------------------------------------------------------------------------
    def logits(self, tokens: torch.LongTensor, last_n: Optional[int] = None) -> torch.Tensor:
        """[b, s] -> [b, s, V] float (or the last `last_n` positions), identical on every rank."""
        s = tokens.shape[1]
        n = s if last_n is None else max(1, min(int(last_n), s))
        return self._run(tokens, (s - n, s, True), labels=None, width=self.vocab_size)

    def token_logprobs(self, tokens: torch.LongTensor) -> torch.Tensor:
        """log p(tokens[:, t] | tokens[:, :t]) for t >= 1: [b, s] -> [b, s - 1] float, identical on every rank."""
        s = tokens.shape[1]
        labels = torch.zeros_like(tokens)
        labels[:, :-1] = tokens[:, 1:]  # the last position predicts nothing scored
        return -self._run(tokens, (0, s - 1, False), labels=labels, width=None)

    @property
    def takes_attention_masks(self) -> bool:
        """Whether masked_logits works here: megamid's core attention (not TE's), no context or sequence
        parallelism (their shards assume a causal sequence), no sliding window."""
        from megatron.core import parallel_state as ps

        from megamid.attention.core_attention import MegamidCoreAttention

        attention = [m for c in self.chunks for m in c.modules() if hasattr(m, "core_attention")]
        return (ps.get_context_parallel_world_size() == 1 and not self.config.sequence_parallel
                and getattr(self.config, "window_size", None) is None
                and all(isinstance(m.core_attention, MegamidCoreAttention) for m in attention))

    def masked_logits(self, tokens: torch.LongTensor, position_ids: torch.LongTensor, allowed: torch.Tensor,
                      lo: int) -> torch.Tensor:
        """Logits of positions lo..s-1 of [b, s] tokens with their own RoPE positions and a [b, s, s] bool
        mask (True = query may attend to key): [b, s - lo, V] float, identical on every rank. What
        shared-prefix scoring runs (megamid.eval.scoring): a prompt once, then candidates that each see
        the prompt and their own earlier tokens."""
        s = tokens.shape[1]
        masked_out = ~allowed.bool().unsqueeze(1)  # megatron's convention: True = masked out
        return self._run(tokens, (lo, s, True), labels=None, width=self.vocab_size,
                         position_ids=position_ids, attention_mask=masked_out)

    # ---- forward ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_mode(self):
        modes = [c.training for c in self.chunks]
        for c in self.chunks:
            c.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for c, mode in zip(self.chunks, modes):
                c.train(mode)

    def _run(self, tokens: torch.LongTensor, keep: Tuple[int, int, bool], labels, width: Optional[int],
             position_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        tokens = torch.as_tensor(tokens, dtype=torch.long).to(self.device)
        b, s = tokens.shape
        pad_to = s
        if self.config.sequence_parallel:
            # Sequence parallelism splits positions over TP; right padding never changes a causal prefix.
            tp = ps.get_tensor_model_parallel_world_size()
            pad_to = -(-s // tp) * tp
        cp = ps.get_context_parallel_world_size()
        if cp > 1:
            # Context parallelism shards positions in 2*cp chunks; right padding never changes a causal prefix.
            multiple = 2 * cp * (ps.get_tensor_model_parallel_world_size() if self.config.sequence_parallel else 1)
            pad_to = -(-pad_to // multiple) * multiple
        pp = ps.get_pipeline_model_parallel_world_size()
        # The interleaved schedule needs at least PP micro-batches: pad with copies of the last row.
        num_micro = pp if len(self.chunks) > 1 else 1
        micro = -(-b // num_micro)
        rows = micro * num_micro
        if rows > b or pad_to > s:
            tokens = torch.nn.functional.pad(tokens, (0, pad_to - s), value=0)
            tokens = torch.cat([tokens, tokens[-1:].expand(rows - b, -1)])
            if labels is not None:
                labels = torch.nn.functional.pad(labels.to(self.device), (0, pad_to - s), value=0)
                labels = torch.cat([labels, labels[-1:].expand(rows - b, -1)])
        if attention_mask is not None:
            # an explicit mask (masked_logits) is never padded: takes_attention_masks excludes SP and CP
            assert pad_to == s, (pad_to, s)
            attention_mask = attention_mask.to(self.device)
            position_ids = position_ids.to(self.device)
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(rows - b, -1, -1, -1)])
            position_ids = torch.cat([position_ids, position_ids[-1:].expand(rows - b, -1)])
        else:
            position_ids = torch.arange(pad_to, device=self.device).unsqueeze(0).expand(rows, -1)
        # Under CP each rank keeps all of its shard; the positions asked for are cut after the CP gather.
        stage_keep = keep if cp == 1 else (0, pad_to // cp, keep[2])
        batches = []
        for m in range(num_micro):
            batch = {"tokens": tokens[m * micro : (m + 1) * micro],
                     "position_ids": position_ids[m * micro : (m + 1) * micro]}
            if attention_mask is not None:
                batch["attention_mask"] = attention_mask[m * micro : (m + 1) * micro]
            if labels is not None:
                batch["labels"] = labels[m * micro : (m + 1) * micro].to(self.device)
            if cp > 1:
                from megamid.attention.context_parallel import shard_batch

                batch = shard_batch(batch, cp, ps.get_context_parallel_rank())
            batch["keep"] = stage_keep
            batches.append(batch)
        with self._eval_mode():
            iterators = [iter(batches) for _ in self.chunks]
            outputs = get_forward_backward_func()(
                forward_step_func=_forward_step,
                data_iterator=iterators if len(iterators) > 1 else iterators[0],
                model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
                num_microbatches=num_micro,
                seq_length=pad_to,
                micro_batch_size=micro,
                forward_only=True,
                collect_non_loss_data=True,
            )
        n = keep[1] - keep[0]
        shape = (rows, n) if width is None else (rows, n, width)
        if ps.is_pipeline_last_stage(ignore_virtual=True):
            out = torch.cat(list(outputs)).contiguous()
            if cp > 1:
                out = _gather_context_parallel(out, pad_to)[:, keep[0]:keep[1]].contiguous()
            assert tuple(out.shape) == shape, (tuple(out.shape), shape)
        else:
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
        if pp > 1:
            dist.broadcast(out, src=ps.get_pipeline_model_parallel_last_rank(),
                           group=ps.get_pipeline_model_parallel_group())
        return out[:b]


__all__: List[str] = ["MegatronLM"]
