"""The TransformerConfig / DDP / optimizer settings megamid asks of megatron, for the GPU target (cuda=True
changes only the config, not the device) and for gloo; real megatron configs are built from them on CPU."""

import os
import warnings

import pytest
import torch

from megamid.config import ConfigError, ModelConfig, ParallelConfig, load_recipe
from megamid.config.recompute import RecomputeConfig
from megamid.model.engine_config import (ddp_kwargs, describe_engine, engine_kwargs, force_param_sync,
                                         optimizer_kwargs)
from megamid.recipe import load_plan
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

megatron = pytest.importorskip("megatron.core")
from megatron.core.distributed import DistributedDataParallelConfig  # noqa: E402
from megatron.core.optimizer import OptimizerConfig  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

MODEL = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, vocab_size=128,
                    dtype="bf16")
LAYOUTS = [
    ParallelConfig(),
    ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
    ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, context_parallel_size=2,
                   cp_comm="ring", sequence_parallel=True, use_distributed_optimizer=True),
    ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2, context_parallel_size=4,
                   cp_comm="a2a+p2p", cp_a2a_size=2),
    ParallelConfig(context_parallel_size=2, cp_comm="a2a", use_distributed_optimizer=True),
]
RECOMPUTES = ["none", "selective", {"granularity": "selective", "modules": ["mlp"]}, "full",
              {"granularity": "full", "method": "block", "num_layers": 2}]
FP8S = [None, {"recipe": "tensorwise"}, {"recipe": "delayed", "amax_history_len": 1024, "format": "e4m3"},
        {"recipe": "blockwise", "bf16_layers_at_start": 1, "bf16_layers_at_end": 1},
        {"recipe": "mxfp8", "param_gather": True}]


def build(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerConfig(**kwargs)


# What the CPU path passed before these settings became per target: gloo must keep it exactly.
GLOO_SETTINGS = dict(bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
                     gradient_accumulation_fusion=False, apply_rope_fusion=False, bias_dropout_fusion=False,
                     cross_entropy_loss_fusion=False, batch_p2p_comm=False, use_cpu_initialization=True,
                     calculate_per_token_loss=True, deallocate_pipeline_outputs=True)


@pytest.mark.parametrize("parallel", LAYOUTS[:3])
def test_gloo_keeps_the_safe_settings(parallel):
    kwargs = engine_kwargs(MODEL, parallel, "selective", None, cuda=False, te=False)
    assert {k: kwargs[k] for k in GLOO_SETTINGS} == GLOO_SETTINGS
    assert "tp_comm_overlap" not in kwargs and "fp8" not in kwargs
    config = build(kwargs)
    assert config.recompute_granularity == "selective" and config.recompute_modules == ["core_attn"]
    ddp = ddp_kwargs(parallel, cuda=False)
    assert ddp["overlap_grad_reduce"] is False and ddp["overlap_param_gather"] is False
    assert ddp["grad_reduce_in_fp32"] is True
    DistributedDataParallelConfig(**ddp)


@pytest.mark.parametrize("parallel", LAYOUTS)
@pytest.mark.parametrize("recompute", RECOMPUTES)
@pytest.mark.parametrize("fp8", FP8S)
def test_gpu_grid_builds_megatron_configs_with_the_expected_fields(parallel, recompute, fp8):
    te_only = parallel.cp_comm in ("a2a", "a2a+p2p")
    kwargs = engine_kwargs(MODEL, parallel, recompute, fp8, cuda=True, te=True, apex=True,
                           tp_comm_overlap=parallel.sequence_parallel)
    config = build(kwargs)
    rc = RecomputeConfig.from_value(recompute)
    # layout
    assert config.tensor_model_parallel_size == parallel.tensor_model_parallel_size
    assert config.context_parallel_size == parallel.context_parallel_size
    assert config.sequence_parallel == parallel.sequence_parallel
    assert config.cp_comm_type == {"allgather": "all_gather", "ring": "p2p", "a2a": "a2a",
                                   "a2a+p2p": "a2a+p2p"}[parallel.cp_comm]
    assert config.hierarchical_context_parallel_sizes == parallel.hierarchical_context_parallel_sizes
    assert config.tp_comm_overlap == parallel.sequence_parallel
    # fusions (Llama: RMSNorm, SwiGLU, no biases)
    assert config.gradient_accumulation_fusion and config.bias_activation_fusion and config.bias_dropout_fusion
    assert config.masked_softmax_fusion and config.cross_entropy_loss_fusion
    assert config.cross_entropy_fusion_impl == "te" and not config.persist_layer_norm
    assert not config.apply_rope_fusion and not config.use_cpu_initialization
    assert config.batch_p2p_comm is True          # megatron's default, not forced
    # recompute
    if rc.granularity == "full":
        assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == (
            "full", rc.method, rc.num_layers)
    elif rc.granularity == "selective":
        assert config.recompute_granularity == "selective" and config.recompute_modules == list(rc.modules)
    else:
        assert config.recompute_granularity is None
    # fp8
    if fp8 is None:
        assert config.fp8 is None and not config.fp8_param
    else:
        assert config.fp8 == fp8.get("format", "hybrid") and config.fp8_recipe == fp8["recipe"]
        assert config.fp8_amax_history_len == fp8.get("amax_history_len", 1)
        assert config.fp8_param == fp8.get("param_gather", False)
        edge = fp8.get("bf16_layers_at_start", 0) + fp8.get("bf16_layers_at_end", 0)
        assert config.first_last_layers_bf16 == bool(edge)
        if edge:
            assert config.num_layers_at_start_in_bf16 == 1 and config.num_layers_at_end_in_bf16 == 1
    ddp = DistributedDataParallelConfig(**ddp_kwargs(parallel, fp8, cuda=True))
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather == parallel.use_distributed_optimizer
    assert ddp.fp8_param_gather == bool(fp8 and fp8.get("param_gather"))
    assert ddp.reuse_grad_buf_for_mxfp8_param_ag == bool(fp8 and fp8.get("param_gather")
                                                          and fp8["recipe"] == "mxfp8")
    opt = OptimizerConfig(lr=1e-4, **optimizer_kwargs(parallel, fp8, cuda=True))
    assert opt.overlap_param_gather == ddp.overlap_param_gather
    assert opt.fp8_recipe == (fp8["recipe"] if fp8 else None)
    assert te_only or engine_kwargs(MODEL, parallel, recompute, None, cuda=True, te=False)["cross_entropy_fusion_impl"] == "native"


def test_without_apex_no_kernels_megatron_would_refuse():
    kwargs = engine_kwargs(MODEL, ParallelConfig(), None, None, cuda=True, te=True, apex=False)
    assert not kwargs["gradient_accumulation_fusion"] and not kwargs["masked_softmax_fusion"]
    assert kwargs["bias_activation_fusion"] and kwargs["bias_dropout_fusion"]
    gelu = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128, activation="gelu",
                       normalization="LayerNorm")
    kwargs = engine_kwargs(gelu, ParallelConfig(), None, None, cuda=True, te=False, apex=True)
    assert not kwargs["bias_activation_fusion"] and kwargs["persist_layer_norm"]   # megatron refuses unbiased GELU
    build(kwargs)


def test_overlap_param_gather_can_be_held_off():
    par = LAYOUTS[1]
    assert ddp_kwargs(par, cuda=True, overlap_param_gather=False)["overlap_param_gather"] is False
    assert optimizer_kwargs(par, cuda=True, overlap_param_gather=False)["overlap_param_gather"] is False
    assert ddp_kwargs(ParallelConfig(), cuda=True)["overlap_param_gather"] is False  # no distributed optimizer


def test_refusals_name_the_setting():
    with pytest.raises(ConfigError, match=r"fp8=tensorwise/hybrid is invalid here: .*no CUDA"):
        engine_kwargs(MODEL, ParallelConfig(), None, {"recipe": "tensorwise"}, cuda=False, te=False)
    with pytest.raises(ConfigError, match=r"TE not importable"):
        engine_kwargs(MODEL, ParallelConfig(), None, True, cuda=True, te=False)
    with pytest.raises(ConfigError, match=r"parallel\.cp_comm='a2a' is invalid without Transformer Engine"):
        engine_kwargs(MODEL, LAYOUTS[4], None, None, cuda=True, te=False)
    with pytest.raises(ConfigError, match=r"fp8\.recipe='delayed' is invalid with recompute modules \[layernorm\]"):
        engine_kwargs(MODEL, ParallelConfig(), {"granularity": "selective", "modules": ["layernorm"]},
                      {"recipe": "delayed"}, cuda=True, te=True)
    with pytest.raises(ConfigError, match=r"tp_comm_overlap needs"):
        engine_kwargs(MODEL, ParallelConfig(), None, None, cuda=True, te=True, tp_comm_overlap=True)


def test_describe_engine_lines():
    gpu = engine_kwargs(MODEL, LAYOUTS[1], "full", {"recipe": "tensorwise"}, cuda=True, te=True, apex=True)
    line = describe_engine(gpu, ddp_kwargs(LAYOUTS[1], cuda=True))
    assert line.startswith("engine: fp8 tensorwise/hybrid; recompute full (uniform, 1); fusions: gradient_accumulation")
    assert "overlap: overlap_grad_reduce, overlap_param_gather" in line and line.endswith("batch_p2p_comm on")
    cpu = engine_kwargs(MODEL, ParallelConfig(), None, None, cuda=False, te=False)
    assert describe_engine(build(cpu), DistributedDataParallelConfig(**ddp_kwargs(ParallelConfig(), cuda=False))) == (
        "engine: bf16; no recompute; fusions: none; overlap: none; batch_p2p_comm off (ordered, for gloo)")


@pytest.mark.parametrize("recipe", ["examples/tiny_cpu/recipe.yaml", "examples/llama3_8b_128k/recipe.yaml"])
def test_example_recipes_map_onto_megatron_configs(recipe):
    plan = load_plan(f"{ROOT}/{recipe}", check_files=False)
    for phase in plan.phases:
        for cuda in (False, True):
            kwargs = engine_kwargs(plan.recipe.model, phase.parallel, phase.recompute, phase.fp8,
                                   cuda=cuda, te=cuda, apex=cuda)
            config = build(kwargs)
            assert config.sequence_parallel == phase.parallel.sequence_parallel
            assert config.context_parallel_size == phase.parallel.context_parallel_size
            assert config.cross_entropy_loss_fusion == cuda and config.gradient_accumulation_fusion == cuda
            expected = phase.recompute.granularity
            assert config.recompute_granularity == (None if expected == "none" else expected)
            DistributedDataParallelConfig(**ddp_kwargs(phase.parallel, phase.fp8, cuda=cuda))


class FakeChunk:
    def __init__(self, overlap):
        self.ddp_config = DistributedDataParallelConfig(overlap_param_gather=overlap, use_distributed_optimizer=True)
        self.calls = []

    def start_param_sync(self, force_sync=False):
        self.calls.append(force_sync)


def test_force_param_sync_only_where_overlapped():
    chunks = [FakeChunk(True), FakeChunk(False)]
    force_param_sync(chunks)
    assert chunks[0].calls == [True] and chunks[1].calls == []


def test_builder_uses_the_mapping_on_this_device():
    from megamid.model.builder import transformer_config

    config = transformer_config(MODEL, ParallelConfig(), "full")
    cuda = torch.cuda.is_available()
    assert config.bias_dropout_fusion == cuda and config.batch_p2p_comm == cuda
    assert config.recompute_granularity == "full" and config.recompute_num_layers == 1


def test_tp_comm_overlap_is_a_validated_opt_in():
    sp = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, tp_comm_overlap=True)
    kwargs = engine_kwargs(MODEL, sp, None, None, cuda=True, te=True, tp_comm_overlap=sp.tp_comm_overlap)
    assert TransformerConfig(**kwargs).tp_comm_overlap is True
    assert engine_kwargs(MODEL, sp, None, None, cuda=True, te=True)["tp_comm_overlap"] is False   # off unless asked
    with pytest.raises(ConfigError, match="tp_comm_overlap needs CUDA, Transformer Engine"):
        engine_kwargs(MODEL, sp, None, None, cuda=False, te=False, tp_comm_overlap=True)
    with pytest.raises(ConfigError, match=r"parallel.tp_comm_overlap=True is invalid: needs parallel.sequence_parallel"):
        ParallelConfig(tensor_model_parallel_size=2, tp_comm_overlap=True)


def test_the_trainer_overlaps_the_weight_gather_on_cuda_only():
    # what StepRunner asks for (overlap_param_gather=None): on with CUDA and the distributed optimizer
    dist_opt = ParallelConfig(use_distributed_optimizer=True)
    assert ddp_kwargs(dist_opt, cuda=True, overlap_param_gather=None)["overlap_param_gather"] is True
    assert optimizer_kwargs(dist_opt, cuda=True, overlap_param_gather=None)["overlap_param_gather"] is True
    assert ddp_kwargs(dist_opt, cuda=False, overlap_param_gather=None)["overlap_param_gather"] is False
    assert ddp_kwargs(ParallelConfig(), cuda=True, overlap_param_gather=None)["overlap_param_gather"] is False


def test_activation_offload_maps_onto_megatrons_cpu_offloading():
    kwargs = engine_kwargs(MODEL, ParallelConfig(), {"granularity": "offload", "num_layers": 2}, None, cuda=True, te=True)
    config = TransformerConfig(**kwargs)
    assert config.cpu_offloading and config.cpu_offloading_num_layers == 2 and config.cpu_offloading_activations
    assert not config.cpu_offloading_weights and config.recompute_granularity is None
    assert "activations of 2 layers offloaded" in describe_engine(config)
    with pytest.raises(ConfigError, match="offload is invalid with pipeline parallelism"):
        engine_kwargs(MODEL, ParallelConfig(pipeline_model_parallel_size=2), "offload", None, cuda=True, te=True)
    with pytest.raises(ConfigError, match="needs CUDA"):
        engine_kwargs(MODEL, ParallelConfig(), "offload", None, cuda=False, te=False)
    with pytest.raises(ConfigError, match="fewer layers than the model's 4"):
        engine_kwargs(MODEL, ParallelConfig(), {"granularity": "offload", "num_layers": 4}, None, cuda=True, te=True)
