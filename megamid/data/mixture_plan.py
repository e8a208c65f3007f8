"""A phase's mixture plan as pure functions of the DataConfig: which streams, and each stream's
share of samples at the phase's first and last sample (linear in between).

No file access, no megatron imports: `megamid plan` can print it, tests can check it exhaustively.
Every sample holds seq_len tokens, so these sample shares are also token shares.
"""

import numpy as np

from megamid.config.data import DataConfig


def _normalised(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    return w / total if total > 0 else np.zeros_like(w)


def _phase_shares(config: DataConfig, weights) -> np.ndarray:
    """Shares of the phase sources (before replay) for one set of weights, honouring long_short."""
    if config.long_short is None:
        return _normalised(weights)
    long_set = set(config.long_short.long_sources)
    is_long = np.array([s.name in long_set for s in config.sources])
    w = np.asarray(weights, dtype=np.float64)
    shares = np.zeros_like(w)
    for mask, group_share in ((is_long, config.long_short.long_share), (~is_long, 1 - config.long_short.long_share)):
        shares[mask] = group_share * _normalised(w[mask])
    # a group whose weights went to zero at one end hands its share to the other group
    return _normalised(shares)


def stream_names(config: DataConfig) -> list:
    """The phase's streams in index order: phase sources, then replay sources."""
    return [s.name for s in config.all_sources()]


def knot_shares(config: DataConfig) -> np.ndarray:
    """[2, n_streams] float64: each stream's share at the phase's first and last sample; rows sum to 1."""
    starts = [s.weight for s in config.sources]
    ends = [s.weight if s.weight_end is None else s.weight_end for s in config.sources]
    replay = config.replay
    replay_shares = replay.share * _normalised([s.weight for s in replay.sources]) if replay.sources \
        else np.zeros(0)
    rows = []
    for weights in (starts, ends):
        main = (1.0 - replay.share) * _phase_shares(config, weights)
        rows.append(np.concatenate([main, replay_shares]))
    return np.stack(rows)


def shares_at(config: DataConfig, sample: int, num_samples: int) -> np.ndarray:
    """Each stream's share at one sample of the phase (what the mixture index tracks)."""
    k = knot_shares(config)
    frac = sample / (num_samples - 1) if num_samples > 1 else 0.0
    return k[0] + (k[1] - k[0]) * frac


def knot_samples(num_samples: int) -> np.ndarray:
    """Sample positions of the knots: the phase's first sample and its last."""
    return np.array([0, max(num_samples - 1, 1)], dtype=np.int64)
