"""Scoring a LanguageModel: log-likelihood of candidate answers, greedy decoding, per-token log-probs.

Ranking is the primary score of every retrieval task: a small or early checkpoint that cannot yet
produce the exact answer string still shows whether it prefers the right answer over plausible wrong
ones, and the chance level (1 / number of candidates) is known exactly. Greedy decoding (exact match)
is the stricter second score, off by default because it costs one forward per generated token.
Candidates share the prompt's forward where the model takes attention masks (candidate_logprobs).
"""

from typing import List, Optional, Sequence

import torch

from megamid.eval.protocol import LanguageModel, Tokenizer


def _logits(model: LanguageModel, tokens: torch.LongTensor, last_n: Optional[int]) -> torch.Tensor:
    out = model.logits(tokens.to(model.device), last_n=last_n)
    if last_n is not None and out.shape[1] > last_n:
        out = out[:, -last_n:]  # the adapter returned every position
    return out.float()


# Shared-prefix scoring puts the prompt and a group of candidates in one row with an [L, L] bool mask:
# rows longer than this fall back to one row per candidate (the mask costs L^2 bytes; 16K tokens = 256 MiB).
MAX_MASK_TOKENS = 16384


def candidate_logprobs(model: LanguageModel, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> List[float]:
    """Sum of log p(candidate tokens | prompt) for each candidate: the probability of generating it.

    A model with `masked_logits` (megamid's MegatronLM) runs the prompt once per group of up to
    `model.max_batch` candidates: one row [prompt, c_1, ..., c_k] where each candidate attends to the
    prompt and its own earlier tokens, at positions len(prompt) + j (shared_prefix_logprobs). Peak
    memory: one row of len(prompt) + the group's tokens, plus its [L, L] mask; rows longer than
    `model.max_mask_tokens` (default MAX_MASK_TOKENS) take the plain path, candidate_logprobs_rows."""
    prompt, candidates = list(prompt), [list(c) for c in candidates]
    group = max(1, int(model.max_batch))
    limit = int(getattr(model, "max_mask_tokens", MAX_MASK_TOKENS))
    shares = callable(getattr(model, "masked_logits", None)) and getattr(model, "takes_attention_masks", True)
    scores: List[float] = []
    for lo in range(0, len(candidates), group):
        chunk = candidates[lo : lo + group]
        if shares and len(prompt) + sum(map(len, chunk)) <= limit:
            scores += shared_prefix_logprobs(model, prompt, chunk)
        else:
            scores += candidate_logprobs_rows(model, prompt, chunk)
    return scores


def shared_prefix_layout(prompt_len: int, lengths: Sequence[int]):
    """(position ids [L], allowed [L, L] bool, candidate starts) of one row [prompt, c_1, ..., c_k]:
    the prompt is causal; candidate i sits at positions prompt_len + j and sees the prompt and its own
    tokens up to j, never another candidate."""
    total = prompt_len + sum(lengths)
    positions = torch.arange(total)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:prompt_len, :prompt_len] = torch.ones(prompt_len, prompt_len, dtype=torch.bool).tril()
    starts, start = [], prompt_len
    for n in lengths:
        starts.append(start)
        positions[start : start + n] = torch.arange(prompt_len, prompt_len + n)
        allowed[start : start + n, :prompt_len] = True
        allowed[start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    return positions, allowed, starts


def shared_prefix_logprobs(model: LanguageModel, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> List[float]:
    """candidate_logprobs of one group in one forward of [prompt, c_1, ..., c_k] (see shared_prefix_layout)."""
    prompt, candidates = list(prompt), [list(c) for c in candidates]
    positions, allowed, starts = shared_prefix_layout(len(prompt), [len(c) for c in candidates])
    tokens = torch.tensor([prompt + [t for c in candidates for t in c]], dtype=torch.long)
    lo = len(prompt) - 1  # the last prompt position predicts every candidate's first token
    logits = model.masked_logits(tokens.to(model.device), positions[None].to(model.device),
                                 allowed[None].to(model.device), lo)
    logp = torch.log_softmax(logits[0].float(), dim=-1).cpu()
    scores = []
    for start, cand in zip(starts, candidates):
        # token j of a candidate is predicted at the prompt's end (j = 0), else at its own token j - 1
        rows = torch.tensor([lo] + list(range(start, start + len(cand) - 1))) - lo
        scores.append(float(logp[rows, torch.tensor(cand)].sum()))
    return scores


def candidate_logprobs_rows(model: LanguageModel, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> List[float]:
    """The plain twin of candidate_logprobs: one row [prompt, candidate] per candidate, up to
    model.max_batch rows per forward (right-padded; a causal model never looks right), only the answer
    positions' logits asked for. Any LanguageModel; every row repeats the prompt's work."""
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


def joint_continuations(tokenizer: Tokenizer, prompt: Sequence[int], candidates: Sequence[str],
                        suffix: Optional[str] = None):
    """(shared prompt ids, one continuation of ids per candidate) for scoring candidates as continuations.

    With `suffix` (the text whose separately encoded ids end `prompt`), each candidate is tokenized
    together with it: encode(suffix + candidate). Where that joint tokenization changes the suffix's last
    tokens (a merge across the boundary), scoring starts at the first token that differs for any
    candidate: the prompt is cut there and every candidate's continuation holds the joint tokens from
    there on, so all candidates are scored on the same text after one shared prompt. Without `suffix`,
    candidates are encoded alone after the whole prompt (lm-evaluation-harness's convention)."""
    prompt = list(prompt)
    if suffix is None:
        return prompt, [list(tokenizer.encode(c)) for c in candidates]
    tail = list(tokenizer.encode(suffix))
    if not tail or prompt[len(prompt) - len(tail):] != tail:
        raise ValueError(f"the prompt does not end with the tokens of its suffix {suffix!r}")
    joint = [list(tokenizer.encode(suffix + c)) for c in candidates]

    def kept(ids: List[int]) -> int:  # suffix tokens the joint encoding leaves unchanged
        n = 0
        while n < min(len(ids) - 1, len(tail)) and ids[n] == tail[n]:
            n += 1
        return n

    keep = min(kept(ids) for ids in joint)
    keep = max(keep, 1 - (len(prompt) - len(tail)))  # at least one prompt token stays to predict from
    return prompt[: len(prompt) - len(tail) + keep], [ids[keep:] for ids in joint]


def rank_candidates(model: LanguageModel, tokenizer: Tokenizer, prompt: Sequence[int], candidates: Sequence[str],
                    suffix: Optional[str] = None) -> int:
    """Index of the candidate string the model finds most likely after the prompt (see joint_continuations)."""
    shared, continuations = joint_continuations(tokenizer, prompt, candidates, suffix)
    scores = candidate_logprobs(model, shared, continuations)
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
    """Exact match after trimming whitespace and a trailing period (of either), which are not the answer."""
    return generated.strip().rstrip(".").strip() == answer.strip().rstrip(".").strip()


def token_logprobs(model: LanguageModel, tokens: torch.LongTensor) -> torch.Tensor:
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1: [b, s] -> [b, s - 1] float, on the CPU.

    A model may provide `token_logprobs(tokens)` itself (an adapter that fuses the output layer with
    the cross entropy never builds [b, s, vocab] logits, which are 64 GB at 128K x 128K vocab)."""
    own = getattr(model, "token_logprobs", None)
    if callable(own):
        return own(tokens.to(model.device)).float().cpu()
    logp = torch.log_softmax(_logits(model, tokens, last_n=None)[:, :-1], dim=-1)
    return logp.gather(-1, tokens[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1).cpu()
