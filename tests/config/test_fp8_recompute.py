"""Per-field validation of the recompute and FP8 settings of a phase."""

import pytest

from megamid.config.base import ConfigError
from megamid.config.fp8 import Fp8Config
from megamid.config.recompute import RecomputeConfig, layers_per_stage_check


def test_recompute_from_values():
    assert RecomputeConfig.from_value(None).granularity == "none"
    assert RecomputeConfig.from_value("full") == RecomputeConfig("full", method="uniform", num_layers=1)
    sel = RecomputeConfig.from_value({"granularity": "selective", "modules": ["layernorm", "mlp"]})
    assert sel.modules == ("layernorm", "mlp") and sel.describe() == "selective(layernorm,mlp)"
    block = RecomputeConfig.from_value({"granularity": "full", "method": "block", "num_layers": 4})
    assert block.describe() == "full(block 4)"


@pytest.mark.parametrize("value,match", [
    ("sometimes", r"recompute\.granularity='sometimes' is invalid: expected one of none, selective, full"),
    ({"granularity": "selective", "modules": ["moe"]}, r"recompute\.modules='moe'"),
    ({"granularity": "selective", "modules": []}, r"needs at least one"),
    ({"granularity": "selective", "modules": "mlp"}, r"recompute\.modules='mlp' is invalid: a list"),
    ({"granularity": "full", "method": "random"}, r"recompute\.method='random'"),
    ({"granularity": "full", "num_layers": 0}, r"recompute\.num_layers=0 is invalid: must be > 0"),
    ({"granularity": "full", "layers": 2}, r"recompute\.layers=2 is invalid: unknown key"),
    (3, r"phases\[x\]\.recompute=3 is invalid"),
])
def test_recompute_errors_name_field_value_and_choices(value, match):
    with pytest.raises(ConfigError, match=match):
        RecomputeConfig.from_value(value, "phases[x].recompute")


def test_recompute_layers_per_stage():
    assert layers_per_stage_check(RecomputeConfig("full", num_layers=16), 16, "r") is None
    assert "num_layers=17 is invalid: a pipeline stage holds 16" in layers_per_stage_check(
        RecomputeConfig("full", num_layers=17), 16, "r")


def test_fp8_from_values():
    assert Fp8Config.from_value(None) is None and Fp8Config.from_value(False) is None
    assert Fp8Config.from_value(True) == Fp8Config("hybrid", "tensorwise")
    delayed = Fp8Config.from_value({"recipe": "delayed", "amax_history_len": 1024, "format": "e4m3"})
    assert delayed.amax_history_len == 1024 and delayed.describe() == "delayed/e4m3"
    edge = Fp8Config.from_value({"bf16_layers_at_start": 1, "bf16_layers_at_end": 2, "param_gather": True})
    assert edge.bf16_layers == 3 and edge.describe() == "tensorwise/hybrid+param"


@pytest.mark.parametrize("value,match", [
    ({"format": "e5m2"}, r"fp8\.format='e5m2' is invalid: expected one of hybrid, e4m3"),
    ({"recipe": "nvfp4"}, r"fp8\.recipe='nvfp4' is invalid: expected one of tensorwise, delayed, blockwise, mxfp8"),
    ({"recipe": "delayed", "bf16_layers_at_end": 1}, r"fp8\.bf16_layers_at_end=1 is invalid: megatron's delayed"),
    ({"recipe": "tensorwise", "amax_history_len": 16}, r"fp8\.amax_history_len=16 is invalid: only delayed"),
    ({"amax_history_len": 0, "recipe": "delayed"}, r"fp8\.amax_history_len=0 is invalid: must be > 0"),
    ({"bf16_layers_at_start": -1}, r"fp8\.bf16_layers_at_start=-1 is invalid: must be >= 0"),
    ({"param_gather": "yes"}, r"fp8\.param_gather='yes' is invalid: true or false"),
    ({"scaling": "x"}, r"fp8\.scaling='x' is invalid: unknown key"),
    ("e4m3", r"phases\[x\]\.fp8='e4m3' is invalid: expected null, true or a mapping"),
])
def test_fp8_errors_name_field_value_and_choices(value, match):
    with pytest.raises(ConfigError, match=match):
        Fp8Config.from_value(value, "phases[x].fp8")


def test_cp_comm_types_and_a2a_group():
    from megamid.config import ParallelConfig

    for comm in ("allgather", "ring", "p2p", "a2a"):
        assert ParallelConfig(context_parallel_size=2, cp_comm=comm).hierarchical_context_parallel_sizes is None
    assert ParallelConfig(context_parallel_size=8, cp_comm="a2a+p2p",
                          cp_a2a_size=4).hierarchical_context_parallel_sizes == [4, 2]
    with pytest.raises(ConfigError, match=r"parallel\.cp_a2a_size=None is invalid: cp_comm a2a\+p2p needs"):
        ParallelConfig(context_parallel_size=4, cp_comm="a2a+p2p")
    with pytest.raises(ConfigError, match=r"parallel\.cp_a2a_size=3 is invalid: a divisor of context_parallel_size=4"):
        ParallelConfig(context_parallel_size=4, cp_comm="a2a+p2p", cp_a2a_size=3)
    with pytest.raises(ConfigError, match=r"parallel\.cp_a2a_size=2 is invalid: only cp_comm: a2a\+p2p"):
        ParallelConfig(context_parallel_size=4, cp_comm="ring", cp_a2a_size=2)
    with pytest.raises(ConfigError, match=r"parallel\.cp_comm='alltoall' is invalid: expected one of allgather, ring, "
                                          r"p2p, a2a, a2a\+p2p"):
        ParallelConfig(cp_comm="alltoall")
