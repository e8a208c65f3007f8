"""Perplexity by position over held-out long documents, and the short-context regression check.

ppl by position  Each document of at least `length` tokens contributes its first `length` tokens (one
                 window from the document's start, so position p really has p tokens of context).
                 The loss of predicting token p (p = 1 .. length - 1) goes to the bucket
                 [edges[j], edges[j+1]) that holds p; buckets are equal-width in position. A model
                 that uses long context has falling loss across buckets; one that breaks past its
                 trained length has rising loss in the late buckets.
short            Perplexity of short documents (first `length` tokens of each) under the model and
                 under a baseline (the checkpoint before context extension), and their ratio: above
                 1 means short-context quality was lost.
Documents are 1-D integer token-id arrays (numpy or lists); `load_documents` reads .npy/.npz files
or a Megatron indexed dataset prefix (PREFIX.bin + PREFIX.idx).
"""

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from megamid.eval.protocol import LanguageModel
from megamid.eval.scoring import token_logprobs


def position_bucket_edges(length: int, num_buckets: int) -> List[int]:
    """num_buckets + 1 increasing edges from 0 to length (fewer buckets if length is small)."""
    edges = np.unique(np.linspace(0, length, min(num_buckets, length) + 1).round().astype(int))
    return [int(e) for e in edges]


def _batched_nll(model: LanguageModel, windows: Sequence[np.ndarray]) -> np.ndarray:
    """-log p(token p | tokens < p) for each window of equal length: [n, length - 1]."""
    out = []
    step = max(1, int(model.max_batch))
    for lo in range(0, len(windows), step):
        tokens = torch.as_tensor(np.stack(windows[lo : lo + step]).astype(np.int64))
        out.append(-token_logprobs(model, tokens).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def ppl_by_position(model: LanguageModel, documents: Sequence, length: int, num_buckets: int = 8,
                    max_documents: Optional[int] = None) -> Dict:
    """Mean loss and perplexity per position bucket at context `length` (see module docstring)."""
    long_enough = [np.asarray(d)[:length] for d in documents if len(d) >= length]
    windows = long_enough if max_documents is None else long_enough[:max_documents]
    edges = position_bucket_edges(length, num_buckets)
    # documents left out by max_documents are not "short": they are counted apart
    result = {"length": length, "documents": len(windows), "skipped_short_documents": len(documents) - len(long_enough),
              "unused_documents": len(long_enough) - len(windows), "bucket_edges": edges, "nll": [], "ppl": [], "tokens": []}
    if not windows:
        result.update(nll_mean=None, ppl_mean=None)
        return result
    nll = _batched_nll(model, windows)  # column c predicts position c + 1
    for lo, hi in zip(edges, edges[1:]):
        cols = nll[:, max(lo, 1) - 1 : hi - 1]
        mean = float(cols.mean()) if cols.size else None
        result["nll"].append(mean)
        result["ppl"].append(math.exp(mean) if mean is not None else None)
        result["tokens"].append(int(cols.size))
    result["nll_mean"] = float(nll.mean())
    result["ppl_mean"] = math.exp(result["nll_mean"])
    return result


def short_perplexity(model: LanguageModel, documents: Sequence, length: int, max_documents: Optional[int] = None) -> Dict:
    """Token-weighted perplexity over the first `length` tokens of each document (shorter ones whole)."""
    windows = [np.asarray(d)[:length] for d in documents if len(d) >= 2]
    if max_documents is not None:
        windows = windows[:max_documents]
    total, count = 0.0, 0
    by_len: Dict[int, List[np.ndarray]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)  # equal lengths batch without padding
    for same in by_len.values():
        nll = _batched_nll(model, same)
        total, count = total + float(nll.sum()), count + nll.size
    ppl = math.exp(total / count) if count else None
    return {"length": length, "documents": len(windows), "tokens": count, "ppl": ppl}


def short_regression(model: LanguageModel, documents: Sequence, length: int, baseline: Optional[LanguageModel] = None,
                     max_documents: Optional[int] = None) -> Dict:
    """Short-document perplexity of the model and of the baseline; ratio = model / baseline."""
    ours = short_perplexity(model, documents, length, max_documents)
    result = {"length": length, "documents": ours["documents"], "tokens": ours["tokens"], "ppl": ours["ppl"],
              "baseline_ppl": None, "ratio": None}
    if baseline is not None:
        base = short_perplexity(baseline, documents, length, max_documents)
        result["baseline_ppl"] = base["ppl"]
        if ours["ppl"] is not None and base["ppl"]:
            result["ratio"] = ours["ppl"] / base["ppl"]
    return result


def load_documents(path: str, max_documents: Optional[int] = None) -> List[np.ndarray]:
    """Token-id documents from a .npy (1-D: one document; 2-D: one per row),
    a .npz (one document per array), or a Megatron indexed dataset prefix (PREFIX.bin / PREFIX.idx)."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            docs = [z[k] for k in z.files]
    elif path.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)  # no pickles: ragged collections go in a .npz
        docs = [arr] if arr.ndim == 1 else list(arr)
    elif os.path.exists(path + ".idx") and os.path.exists(path + ".bin"):
        from megatron.core.datasets.indexed_dataset import IndexedDataset  # only for this format

        ds = IndexedDataset(path)
        n = len(ds) if max_documents is None else min(len(ds), max_documents)
        # Copies: megatron's items are views of a memory map that closes when `ds` goes away.
        docs = [np.array(ds[i]) for i in range(n)]
    else:
        raise FileNotFoundError(f"no documents at {path!r}: expected .npy, .npz or an indexed dataset prefix")
    return docs[:max_documents] if max_documents is not None else docs

