"""pytest tests/attention/test_backend.py

MEGAMID_ATTENTION / MEGAMID_SPEC resolved once per model, the layer spec's core attention, and the
start-up line naming the path.
"""

import pytest

from megamid.attention import attention_backend, describe_attention, with_core_attention
from megamid.config.base import ConfigError
from megamid.config.parallel import ParallelConfig


def test_describe_attention_names_backend_and_cp_scheme():
    line = describe_attention(ParallelConfig(), "megamid")
    assert line.startswith("attention: megamid core attention") and "no context parallelism" in line
    line = describe_attention(ParallelConfig(context_parallel_size=2, cp_comm="ring"), "megamid")
    assert "context parallel 2 (ring" in line and "lse merge" in line
    line = describe_attention(ParallelConfig(context_parallel_size=4), "megamid")
    assert "context parallel 4 (allgather: KV all-gather" in line
    line = describe_attention(ParallelConfig(context_parallel_size=2, cp_comm="ring"), "te")
    assert "Transformer Engine" in line and "cp_comm_type=p2p" in line
    assert "megatron DotProductAttention" in describe_attention(ParallelConfig(), "megatron")


def test_attention_backend_choices():
    assert attention_backend("auto", "local") == "megamid" and attention_backend("auto", "te") == "te"
    assert attention_backend("megamid", "te") == "megamid"
    with pytest.raises(ConfigError, match="Transformer Engine"):
        attention_backend("te", "local")
    with pytest.raises(ConfigError, match="MEGAMID_ATTENTION='flash'"):
        attention_backend("flash", "local")


def test_backends_are_resolved_once_from_the_environment():
    from megamid.model.builder import ModelBackends, resolve_backends

    assert resolve_backends({}, te=False) == ModelBackends("local", "megamid")
    assert resolve_backends({}, te=True) == ModelBackends("te", "te")
    assert resolve_backends({"MEGAMID_SPEC": "local"}, te=True) == ModelBackends("local", "megamid")
    assert resolve_backends({"MEGAMID_ATTENTION": "megatron"}, te=False) == ModelBackends("local", "megatron")
    with pytest.raises(ConfigError, match="MEGAMID_SPEC=te"):
        resolve_backends({"MEGAMID_SPEC": "te"}, te=False)
    with pytest.raises(ConfigError, match="MEGAMID_SPEC='tex'"):
        resolve_backends({"MEGAMID_SPEC": "tex"}, te=False)
    line = ModelBackends("local", "megamid").describe(ParallelConfig())
    assert line.startswith("layer spec: local; attention: megamid core attention")


def test_layer_spec_core_attention():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megamid.attention.core_attention import MegamidCoreAttention
    from megamid.config.model import ModelConfig
    from megamid.model.builder import ModelBackends, layer_spec

    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=256)

    def core(spec):
        return spec.submodules.self_attention.submodules.core_attention

    assert core(layer_spec(model, ModelBackends("local", "megamid"))) is MegamidCoreAttention
    assert core(layer_spec(model, ModelBackends("local", "megatron"))) is DotProductAttention
    assert with_core_attention("spec", "te") == "spec"


def test_describe_attention_names_te_cp_types():
    line = describe_attention(ParallelConfig(context_parallel_size=4, cp_comm="a2a"), "te")
    assert "a2a: all-to-all over heads" in line and line.endswith("cp_comm_type=a2a")
    line = describe_attention(ParallelConfig(context_parallel_size=4, cp_comm="a2a+p2p", cp_a2a_size=2), "te")
    assert "all-to-all inside groups, ring across" in line and line.endswith("cp_comm_type=a2a+p2p")
