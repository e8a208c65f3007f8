"""pytest tests/eval/test_shared_prefix.py

Shared-prefix candidate scoring (megamid.eval.scoring.candidate_logprobs with a model's masked_logits)
against its plain twin, one row per candidate (candidate_logprobs_rows), on a tiny causal attention
model with RoPE-like position dependence: candidates of different lengths, groups split by max_batch,
the fallback past max_mask_tokens, and models without masks. The same check on a megatron model loaded
with megamid.load is in tests/eval/test_inference.py.
"""

import pytest
import torch

from megamid.eval.scoring import candidate_logprobs, candidate_logprobs_rows, shared_prefix_layout


class TinyAttentionLM:
    """One softmax-attention layer over token + position embeddings: every logit depends on the whole
    visible context and on the positions, so a wrong mask or position shows."""

    device = "cpu"

    def __init__(self, vocab=11, dim=16, max_batch=2, max_mask_tokens=10_000):
        gen = torch.Generator().manual_seed(0)
        self.tok = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
        self.pos = torch.randn(256, dim, generator=gen, dtype=torch.float64)
        self.q, self.k, self.v, self.out = (torch.randn(dim, d, generator=gen, dtype=torch.float64)
                                            for d in (dim, dim, dim, vocab))
        self.max_batch, self.max_mask_tokens, self.masked_calls = max_batch, max_mask_tokens, 0

    def _forward(self, tokens, positions, allowed):
        x = self.tok[tokens] + self.pos[positions]
        scores = (x @ self.q) @ (x @ self.k).transpose(-1, -2)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return (torch.softmax(scores, -1) @ (x @ self.v) + x) @ self.out

    def logits(self, tokens, last_n=None):
        s = tokens.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        out = self._forward(tokens, torch.arange(s).expand_as(tokens), causal)
        return out if last_n is None else out[:, -last_n:]

    def masked_logits(self, tokens, position_ids, allowed, lo):
        self.masked_calls += 1
        return self._forward(tokens, position_ids, allowed)[:, lo:]


class RowsOnly(TinyAttentionLM):
    masked_logits = None


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
CANDIDATES = [[7], [8, 2], [0, 10, 4], [7, 7], [1]]


def test_layout_sees_the_prompt_and_its_own_tokens_only():
    positions, allowed, starts = shared_prefix_layout(3, [2, 1])
    assert positions.tolist() == [0, 1, 2, 3, 4, 3] and starts == [3, 5]
    assert allowed[4].tolist() == [True, True, True, True, True, False]  # c1 token 1: prompt + c1
    assert allowed[5].tolist() == [True, True, True, False, False, True]  # c2 token 0: prompt + itself
    assert allowed[1].tolist() == [True, True, False, False, False, False]  # the prompt stays causal


@pytest.mark.parametrize("max_batch", [1, 2, 5])
def test_shared_prefix_scores_equal_one_row_per_candidate(max_batch):
    model = TinyAttentionLM(max_batch=max_batch)
    shared = candidate_logprobs(model, PROMPT, CANDIDATES)
    assert model.masked_calls == -(-len(CANDIDATES) // max_batch)  # one forward per group of candidates
    rows = candidate_logprobs_rows(model, PROMPT, CANDIDATES)
    assert shared == pytest.approx(rows, abs=1e-10)
    assert len(set(round(x, 6) for x in rows)) == len(rows)  # the scores do tell candidates apart


def test_long_rows_and_models_without_masks_take_the_plain_path():
    model = TinyAttentionLM(max_batch=5, max_mask_tokens=len(PROMPT) + 3)
    scores = candidate_logprobs(model, PROMPT, CANDIDATES)
    assert model.masked_calls == 0 and scores == candidate_logprobs_rows(model, PROMPT, CANDIDATES)
    plain = RowsOnly()
    assert candidate_logprobs(plain, PROMPT, CANDIDATES) == candidate_logprobs_rows(plain, PROMPT, CANDIDATES)
