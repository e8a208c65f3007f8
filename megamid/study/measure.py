"""What the studies measure on a model (any megamid.eval.protocol.LanguageModel):

passkey   log-likelihood ranking of 4 candidate keys (chance 0.25) by length and depth (megamid.eval.runner)
mqar      held-out multi-query associative recall documents (megamid.data.synthetic): a query is right when
          every token of its value is the model's argmax given the document so far (teacher-forced exact
          match; chance 0.1 for the one-digit values); by length and by depth (where the queried pair sits
          among the pairs, in thirds)
ppl       perplexity by position over held-out Python source files (megamid.eval.perplexity)
short     perplexity of the first L tokens of the same files (the short-context regression check)
"""

from typing import Dict, List, Sequence

import numpy as np
import torch

from megamid.eval.perplexity import ppl_by_position, short_perplexity
from megamid.eval.runner import evaluate
from megamid.eval.scoring import token_logprobs

DEPTH_BINS = ("0-1/3", "1/3-2/3", "2/3-1")


def _argmax_hits(model, rows: List[List[int]]) -> List[np.ndarray]:
    """Per row: argmax(prediction at p - 1) == token p, for p >= 1 (teacher-forced)."""
    out = []
    step = max(1, int(model.max_batch))
    for lo in range(0, len(rows), step):
        tokens = torch.tensor(rows[lo : lo + step], dtype=torch.long)
        logits = model.logits(tokens.to(model.device), last_n=None).float().cpu()
        out += list((logits[:, :-1].argmax(-1) == tokens[:, 1:]).numpy())
    return out


def mqar_accuracy(model, documents: Sequence, length: int) -> Dict:
    """Exact-match accuracy of the queried values of (ids, spans) documents, overall and by depth."""
    docs = [(ids[:length], spans) for ids, spans in documents if len(ids) >= 2]
    by_len: Dict[int, list] = {}
    for ids, spans in docs:
        by_len.setdefault(len(ids), []).append((ids, spans))
    right, bins = [], {b: [] for b in DEPTH_BINS}
    for same in by_len.values():
        hits = _argmax_hits(model, [ids for ids, _ in same])
        for (ids, spans), hit in zip(same, hits):
            for lo, hi, depth in spans:
                ok = bool(hit[lo - 1 : hi - 1].all())
                right.append(ok)
                bins[DEPTH_BINS[min(2, int(3 * depth))]].append(ok)
    return {"length": length, "queries": len(right), "accuracy": float(np.mean(right)) if right else None,
            "by_depth": {b: (float(np.mean(v)) if v else None) for b, v in bins.items()}}


def passkey_accuracy(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], samples: int, seed: int = 0) -> Dict:
    """{length: accuracy} and {length: {depth: accuracy}} of ranked passkey retrieval."""
    r = evaluate(model, tokenizer, ["passkey"], list(lengths), depths=list(depths), samples=samples, seed=seed)["passkey"]
    grid = r["grid"]
    by_length = {n: float(np.mean([grid["accuracy"][d][i] for d in range(len(grid["depths"]))]))
                 for i, n in enumerate(grid["lengths"])}
    by_depth = {n: {str(d): grid["accuracy"][j][i] for j, d in enumerate(grid["depths"])}
                for i, n in enumerate(grid["lengths"])}
    return {"accuracy": by_length, "by_depth": by_depth, "chance": r["chance"]}


def ppl_positions(model, documents: Sequence, lengths: Sequence[int], num_buckets: int = 8) -> Dict:
    out = {}
    for n in lengths:
        r = ppl_by_position(model, documents, n, num_buckets)
        out[n] = {"ppl_mean": r["ppl_mean"], "ppl": r["ppl"], "edges": r["bucket_edges"], "documents": r["documents"]}
    return out


def short_ppl(model, documents: Sequence, length: int) -> float:
    return short_perplexity(model, documents, length)["ppl"]
