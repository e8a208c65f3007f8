"""Non-strict loading limited to Transformer Engine's _extra_state keys."""

import pytest
import torch

from megamid.config.base import ConfigError
from megamid.model.state_keys import check_load_keys, load_model_state, split_extra_state


class WithExtraState(torch.nn.Module):
    """A stand-in for a TE module: a weight plus an `_extra_state` entry in its state dict."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def get_extra_state(self):
        return torch.tensor([1.0])

    def set_extra_state(self, state):
        self.loaded_extra = state


class Model(torch.nn.Module):
    def __init__(self, te=True):
        super().__init__()
        self.core_attention = WithExtraState() if te else torch.nn.Linear(1, 1, bias=False)
        self.linear_qkv = torch.nn.Linear(2, 2, bias=False)


def test_split():
    keys = ["a.core_attention._extra_state", "a.weight", "b._extra_state", "c.extra_state_x"]
    assert split_extra_state(keys) == (["a.core_attention._extra_state", "b._extra_state"],
                                       ["a.weight", "c.extra_state_x"])


def test_te_model_loads_a_checkpoint_without_extra_state():
    model = Model()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match="_extra_state"):
        Model().load_state_dict(state)                     # what a strict load did
    assert load_model_state(Model(), state) == ["core_attention._extra_state"]


def test_local_model_ignores_unexpected_extra_state():
    te_state = {"linear_qkv.weight": torch.zeros(2, 2), "core_attention._extra_state": torch.tensor([1.0]),
                "core_attention.weight": torch.zeros(1, 1)}
    model = Model(te=False)
    assert load_model_state(model, te_state) == ["core_attention._extra_state"]
    assert torch.equal(model.linear_qkv.weight, torch.zeros(2, 2))


def test_anything_else_still_fails_naming_the_keys():
    state = {k: v for k, v in Model().state_dict().items() if k != "linear_qkv.weight"}
    state["output_layer.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError) as exc:
        load_model_state(Model(), state, where="base checkpoint ckpt/iter_0000010")
    text = str(exc.value)
    assert text.startswith("base checkpoint ckpt/iter_0000010 does not match the model: 1 missing "
                           "(linear_qkv.weight); 1 unexpected (output_layer.weight)")


def test_long_key_lists_are_shortened():
    with pytest.raises(ConfigError, match=r"12 missing \(k0, k1, k2, k3, k4, k5, k6, k7 and 4 more\)"):
        check_load_keys([f"k{i}" for i in range(12)], [])


def test_sharded_load_skips_only_extra_state(monkeypatch):
    pytest.importorskip("megatron.core")
    from megatron.core import dist_checkpointing

    from megamid.model.state_keys import load_sharded_tolerant

    calls = []

    def fake_load(sharded, path, strict=None, **kw):
        calls.append(strict.value)
        return {"model": {}}, {"optimizer.step"}, set(fake_load.requested_only)

    monkeypatch.setattr(dist_checkpointing, "load", fake_load)
    fake_load.requested_only = ["decoder.layers.0.self_attention.core_attention._extra_state"]
    assert load_sharded_tolerant({}, "ckpt/iter_1") == {"model": {}} and calls == ["return_all"]
    fake_load.requested_only = ["decoder.layers.0.mlp.linear_fc1.weight"]
    with pytest.raises(ConfigError, match=r"checkpoint ckpt/iter_1 does not match the model: 1 missing "
                                          r"\(decoder\.layers\.0\.mlp\.linear_fc1\.weight\)"):
        load_sharded_tolerant({}, "ckpt/iter_1")
