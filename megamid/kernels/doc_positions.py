"""Positions and cu_seqlens for packed rows whose documents end with an EOD token."""

import numpy as np
import torch

from megamid.rope.positions import packed_positions

try:
    from megamid import _C
except ImportError:  # extension not built: the reference below serves
    _C = None


def doc_positions_reference(tokens: np.ndarray, eod: int):
    """The C++ helper's reference: documents end at every EOD and at every row's end; positions restart
    at each (megamid.rope.positions.packed_positions of those boundaries)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    rows, seq_len = tokens.shape
    ends = tokens == eod
    ends[:, -1] = True
    cu = np.concatenate([[0], np.flatnonzero(ends.reshape(-1)) + 1]).astype(np.int32)
    positions = packed_positions(torch.from_numpy(cu.astype(np.int64))).numpy().reshape(rows, seq_len)
    return positions, cu


def doc_positions(tokens, eod: int):
    """(position_ids [rows, seq_len] int64, cu_seqlens [n_docs + 1] int32) as torch tensors.

    Positions restart after every EOD; a row's end also ends its last document."""
    array = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if _C is not None:
        pos, cu = _C.doc_positions(array.astype(np.int64, copy=False), int(eod))
    else:
        pos, cu = doc_positions_reference(array, eod)
    return torch.from_numpy(np.ascontiguousarray(pos)), torch.from_numpy(np.ascontiguousarray(cu))
