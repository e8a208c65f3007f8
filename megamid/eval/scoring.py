"""Scoring a LanguageModel: log-likelihood of candidate answers, greedy decoding, per-token log-probs.

Ranking is the primary score of every retrieval task: a small or early checkpoint that cannot yet
produce the exact answer string still shows whether it prefers the right answer over plausible wrong
ones, and the chance level (1 / number of candidates) is known exactly. Greedy decoding (exact match)
is the stricter second score, off by default because it costs one forward per generated token.
"""

from typing import List, Optional, Sequence

import torch

from megamid.eval.protocol import LanguageModel, Tokenizer


def _logits(model: LanguageModel, tokens: torch.LongTensor, last_n: Optional[int]) -> torch.Tensor:
    out = model.logits(tokens.to(model.device), last_n=last_n)
    if last_n is not None and out.shape[1] > last_n:
        out = out[:, -last_n:]  # the adapter returned every position
    return out.float()


def candidate_logprobs(model: LanguageModel, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> List[float]:
    """Sum of log p(candidate tokens | prompt) for each candidate: the probability of generating it.

    The candidates of one prompt share it, so they are batched together (right-padded; a causal model
    never looks right) and only the answer positions' logits are asked for."""
    prompt = list(prompt)
    longest = max(len(c) for c in candidates)
    pad = prompt[-1]  # any valid id: padded positions are never scored
    scores: List[float] = []
    for lo in range(0, len(candidates), max(1, int(model.max_batch))):
        chunk = candidates[lo : lo + int(model.max_batch)]
        rows = [prompt + list(c) + [pad] * (longest - len(c)) for c in chunk]
        tokens = torch.tensor(rows, dtype=torch.long)
        # logits at position len(prompt) - 1 + j predict candidate token j
        logp = torch.log_softmax(_logits(model, tokens, last_n=longest + 1)[:, :longest], dim=-1).cpu()
        for row, cand in enumerate(chunk):
            idx = torch.tensor(list(cand), dtype=torch.long)
            scores.append(float(logp[row, torch.arange(len(cand)), idx].sum()))
    return scores


def rank_candidates(model: LanguageModel, tokenizer: Tokenizer, prompt: Sequence[int], candidates: Sequence[str]) -> int:
    """Index of the candidate string the model finds most likely after the prompt."""
    scores = candidate_logprobs(model, prompt, [tokenizer.encode(c) for c in candidates])
    return max(range(len(scores)), key=scores.__getitem__)


def greedy_generate(model: LanguageModel, tokenizer: Tokenizer, prompt: Sequence[int], max_new_tokens: int) -> str:
    """Argmax decoding until a newline, end of document or max_new_tokens (no KV cache: one forward each)."""
    ids = list(prompt)
    new: List[int] = []
    for _ in range(max_new_tokens):
        nxt = int(_logits(model, torch.tensor([ids + new]), last_n=1)[0, -1].argmax())
        if nxt == tokenizer.eod:
            break
        new.append(nxt)
        if "\n" in tokenizer.decode([nxt]):
            break
    return tokenizer.decode(new)


def answers_match(generated: str, answer: str) -> bool:
    """Exact match after trimming whitespace and a trailing period, which are not the answer."""
    return generated.strip().rstrip(".").strip() == answer.strip()


def token_logprobs(model: LanguageModel, tokens: torch.LongTensor) -> torch.Tensor:
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1: [b, s] -> [b, s - 1] float, on the CPU.

    A model may provide `token_logprobs(tokens)` itself (an adapter that fuses the output layer with
    the cross entropy never builds [b, s, vocab] logits, which are 64 GB at 128K x 128K vocab)."""
    own = getattr(model, "token_logprobs", None)
    if callable(own):
        return own(tokens.to(model.device)).float().cpu()
    logp = torch.log_softmax(_logits(model, tokens, last_n=None)[:, :-1], dim=-1)
    return logp.gather(-1, tokens[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1).cpu()
