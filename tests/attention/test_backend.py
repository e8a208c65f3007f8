"""pytest tests/attention/test_backend.py

MEGAMID_ATTENTION selection, the layer spec's core attention, and the start-up line naming the path.
"""

import pytest

from megamid.attention import attention_backend, describe_attention, with_core_attention
from megamid.config.base import ConfigError
from megamid.config.parallel import ParallelConfig


def test_describe_attention_names_backend_and_cp_scheme(monkeypatch):
    monkeypatch.delenv("MEGAMID_ATTENTION", raising=False)
    line = describe_attention(ParallelConfig(), spec_backend="local")
    assert line.startswith("attention: megamid core attention") and "no context parallelism" in line
    line = describe_attention(ParallelConfig(context_parallel_size=2, cp_comm="ring"), spec_backend="local")
    assert "context parallel 2 (ring" in line and "lse merge" in line
    line = describe_attention(ParallelConfig(context_parallel_size=4), spec_backend="local")
    assert "context parallel 4 (allgather: KV all-gather" in line
    line = describe_attention(ParallelConfig(context_parallel_size=2, cp_comm="ring"), spec_backend="te")
    assert "Transformer Engine" in line and "cp_comm_type=p2p" in line
    monkeypatch.setenv("MEGAMID_ATTENTION", "megatron")
    assert "megatron DotProductAttention" in describe_attention(ParallelConfig(), spec_backend="local")


def test_attention_backend_choices(monkeypatch):
    monkeypatch.delenv("MEGAMID_ATTENTION", raising=False)
    assert attention_backend("local") == "megamid" and attention_backend("te") == "te"
    monkeypatch.setenv("MEGAMID_ATTENTION", "megamid")
    assert attention_backend("te") == "megamid"
    monkeypatch.setenv("MEGAMID_ATTENTION", "te")
    with pytest.raises(ConfigError, match="Transformer Engine"):
        attention_backend("local")
    monkeypatch.setenv("MEGAMID_ATTENTION", "flash")
    with pytest.raises(ConfigError, match="MEGAMID_ATTENTION='flash'"):
        attention_backend("local")


def test_layer_spec_core_attention(monkeypatch):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megamid.attention.core_attention import MegamidCoreAttention
    from megamid.config.model import ModelConfig
    from megamid.model.builder import layer_spec

    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256)

    def core(spec):
        return spec.submodules.self_attention.submodules.core_attention

    monkeypatch.delenv("MEGAMID_ATTENTION", raising=False)
    assert core(layer_spec(model, "local")) is MegamidCoreAttention
    monkeypatch.setenv("MEGAMID_ATTENTION", "megatron")
    assert core(layer_spec(model, "local")) is DotProductAttention
    assert with_core_attention("spec", "local") == "spec"


def test_describe_attention_names_te_cp_types(monkeypatch):
    monkeypatch.setenv("MEGAMID_ATTENTION", "auto")
    line = describe_attention(ParallelConfig(context_parallel_size=4, cp_comm="a2a"), spec_backend="te")
    assert "a2a: all-to-all over heads" in line and line.endswith("cp_comm_type=a2a")
    line = describe_attention(ParallelConfig(context_parallel_size=4, cp_comm="a2a+p2p", cp_a2a_size=2),
                              spec_backend="te")
    assert "all-to-all inside groups, ring across" in line and line.endswith("cp_comm_type=a2a+p2p")
