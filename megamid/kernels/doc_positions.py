"""Positions and cu_seqlens for packed rows whose documents end with an EOD token."""

import numpy as np
import torch

try:
    from megamid import _C
except ImportError:  # extension not built: the reference below serves
    _C = None


def doc_positions_reference(tokens: np.ndarray, eod: int):
    tokens = np.asarray(tokens, dtype=np.int64)
    rows, seq_len = tokens.shape
    positions = np.empty_like(tokens)
    cu = [0]
    for r in range(rows):
        p = 0
        for i in range(seq_len):
            positions[r, i] = p
            p += 1
            if tokens[r, i] == eod or i == seq_len - 1:
                cu.append(r * seq_len + i + 1)
                p = 0
    return positions, np.asarray(cu, dtype=np.int32)


def doc_positions(tokens, eod: int):
    """(position_ids [rows, seq_len] int64, cu_seqlens [n_docs + 1] int32) as torch tensors.

    Positions restart after every EOD; a row's end also ends its last document."""
    array = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if _C is not None:
        pos, cu = _C.doc_positions(array.astype(np.int64, copy=False), int(eod))
    else:
        pos, cu = doc_positions_reference(array, eod)
    return torch.from_numpy(np.ascontiguousarray(pos)), torch.from_numpy(np.ascontiguousarray(cu))
