"""python -m pytest -q tests/data/test_data_config.py

DataConfig validation and the pure mixture plan (shares per stream)."""

import numpy as np
import pytest

from megamid.config import ConfigError
from megamid.config.data import DataConfig
from megamid.data.mixture_plan import knot_shares, shares_at, stream_names

RECIPE = {
    "sources": [{"name": "code", "prefix": "c", "weight": 0.5},
                {"name": "prose", "prefix": "p", "weight": 0.3, "weight_end": 0.1},
                {"name": "long", "prefix": "l", "weight": 0.2, "upsample_long": 2.0}],
    "replay": {"share": 0.2, "sources": [{"name": "web", "prefix": "w", "weight": 1.0}]},
    "long_short": {"long_share": 0.6, "long_sources": ["long"], "long_threshold_tokens": 2048},
    "pack": True,
    "seed": 7,
}


def test_round_trip_and_names():
    cfg = DataConfig.from_dict(RECIPE)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert stream_names(cfg) == ["code", "prose", "long", "web"]
    assert cfg.long_threshold_for(cfg.sources[2]) == 2048


def test_shares_replay_long_short_and_schedule():
    cfg = DataConfig.from_dict(RECIPE)
    k = knot_shares(cfg)
    np.testing.assert_allclose(k.sum(1), 1.0)
    np.testing.assert_allclose(k[:, 3], 0.2)  # replay
    np.testing.assert_allclose(k[:, 2], 0.8 * 0.6)  # long group: 60% of the non-replay tokens
    np.testing.assert_allclose(k[0, :2], 0.8 * 0.4 * np.array([0.5, 0.3]) / 0.8)
    np.testing.assert_allclose(k[1, :2], 0.8 * 0.4 * np.array([0.5, 0.1]) / 0.6)
    np.testing.assert_allclose(shares_at(cfg, 50, 101), k.mean(0))


def test_plain_weights_normalise():
    cfg = DataConfig.from_dict({"sources": [{"name": "a", "prefix": "a", "weight": 3},
                                            {"name": "b", "prefix": "b", "weight": 1}]})
    np.testing.assert_allclose(knot_shares(cfg), [[0.75, 0.25], [0.75, 0.25]])


@pytest.mark.parametrize("patch, field", [
    ({"sources": [{"name": "a", "prefix": "a", "weight": -1}]}, "data.sources[0].weight"),
    ({"sources": [{"name": "a", "prefix": "a", "weight": 0}, {"name": "b", "prefix": "b", "weight": 0}]},
     "data.sources[*].weight"),
    ({"sources": [{"name": "a", "prefix": "a", "weight": 1, "weight_end": 0}]}, "data.sources[*].weight_end"),
    ({"sources": [{"name": "a", "prefix": "a", "wieght": 1}]}, "data.sources[0].wieght"),
    ({"sources": [{"name": "a", "prefix": "a"}, {"name": "a", "prefix": "b"}]}, "data.sources[*].name"),
    ({"sources": [{"prefix": "a"}]}, "data.sources[0].name"),
    ({"sources": []}, "data.sources"),
    ({"replay": {"share": 1.0, "sources": [{"name": "w", "prefix": "w"}]}}, "data.replay.share"),
    ({"replay": {"share": 0.1}}, "data.replay.sources"),
    ({"long_short": {"long_share": 0.6, "long_sources": ["nope"]}}, "data.long_short.long_sources"),
    ({"long_short": {"long_share": 1.5, "long_sources": ["long"]}}, "data.long_short.long_share"),
    ({"sources": [{"name": "a", "prefix": "a", "upsample_long": 0.5}]}, "data.sources[0].upsample_long"),
    ({"pack": "yes"}, "data.pack"),
    ({"seed": -1}, "data.seed"),
])
def test_errors_name_the_field(patch, field):
    bad = {**RECIPE, **patch}
    if "sources" in patch and "long_short" not in patch:
        bad.pop("long_short")
    with pytest.raises(ConfigError) as err:
        DataConfig.from_dict(bad)
    assert str(err.value).startswith(field + "="), str(err.value)


@pytest.mark.parametrize("source, message", [
    ({"weight": float("inf")}, "data.sources[0].weight=inf is invalid: expected a finite number >= 0"),
    ({"weight": float("nan")}, "data.sources[0].weight=nan is invalid"),
    ({"weight_end": float("inf")}, "data.sources[0].weight_end=inf is invalid"),
    ({"upsample_long": float("inf")}, "data.sources[0].upsample_long=inf is invalid"),
])
def test_non_finite_source_numbers_are_refused(source, message):
    with pytest.raises(ConfigError) as exc:
        DataConfig.from_dict({"sources": [{"name": "a", "prefix": "a", **source}]})
    assert message in str(exc.value)
