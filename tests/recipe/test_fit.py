"""`megamid plan --gpu`: the per-phase memory table and the hardware checks (FP8, MXFP8, TE, fit)."""

import os
from types import SimpleNamespace

import pytest

from megamid.cli import main
from megamid.config import ModelConfig, ParallelConfig, TrainingConfig
from megamid.config.fp8 import Fp8Config
from megamid.config.recompute import RecomputeConfig
from megamid.recipe.fit import format_memory_table, hardware_problems, phase_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA3_8B = ModelConfig(num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                        ffn_hidden_size=14336, vocab_size=128256, max_position_embeddings=8192, dtype="bf16")


def fake_plan(parallel, seq_len=8192, recompute=None, fp8=None, dp=4, world=8):
    """A RecipePlan look-alike: one PhasePlan-like row with its resolved recompute and fp8."""
    training = TrainingConfig(global_batch_size=64, micro_batch_size=1, seq_len=seq_len, train_steps=1)
    row = SimpleNamespace(name="p", training=training, parallel=parallel, data_parallel_size=dp, layout="L",
                          recompute=RecomputeConfig.from_value(recompute), fp8=Fp8Config.from_value(fp8))
    return SimpleNamespace(recipe=SimpleNamespace(model=LLAMA3_8B), phases=[row], world_size=world)


TP2 = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True)


def test_fp8_checks_by_target():
    plan = fake_plan(TP2, fp8={"recipe": "tensorwise"})
    assert hardware_problems(plan, "h100-80gb") == []
    assert any("without Transformer Engine" in p for p in hardware_problems(plan, "h100-80gb", te=False))
    assert any("no FP8 tensor cores" in p for p in hardware_problems(plan, "a100-80gb"))
    mx = fake_plan(TP2, fp8={"recipe": "mxfp8"})
    assert any("fp8.recipe='mxfp8' is invalid on h100-80gb (hopper): MXFP8 needs Blackwell" in p
               for p in hardware_problems(mx, "h100-80gb"))
    assert hardware_problems(mx, "b200-192gb") == []


def test_te_only_cp_comm_needs_te():
    par = ParallelConfig(tensor_model_parallel_size=2, context_parallel_size=2, cp_comm="a2a",
                         sequence_parallel=True, use_distributed_optimizer=True)
    plan = fake_plan(par, seq_len=16384, dp=2, recompute="full")
    assert hardware_problems(plan, "h100-80gb") == []
    assert any("cp_comm='a2a' is invalid without Transformer Engine" in p
               for p in hardware_problems(plan, "h100-80gb", te=False))


def test_too_big_phase_is_a_problem_and_full_recompute_fixes_it():
    plan = fake_plan(TP2, seq_len=65536, dp=4)
    problems = hardware_problems(plan, "h100-80gb")
    assert len(problems) == 1 and "phases[p] does not fit on h100-80gb" in problems[0]
    assert "recompute: full" in problems[0]
    assert hardware_problems(plan, "h200-141gb") != []
    fixed = fake_plan(TP2, seq_len=65536, dp=4, recompute="full")
    assert hardware_problems(fixed, "h100-80gb") == []
    (memory,) = phase_memory(fixed, "h100-80gb")
    assert memory.fits and memory.recompute.granularity == "full"
    too_many = fake_plan(TP2, recompute={"granularity": "full", "num_layers": 33})
    assert any("num_layers=33 is invalid: a pipeline stage holds 32" in p
               for p in hardware_problems(too_many, "h100-80gb"))


def test_table_lists_components_and_verdict():
    text = format_memory_table(fake_plan(TP2, seq_len=65536), "h100-80gb")
    lines = text.splitlines()
    assert "h100-80gb (79.2 GiB, hopper)" in lines[0]
    assert lines[1].split()[:4] == ["phase", "layout", "recompute", "fp8"]
    assert lines[-1].split()[-1] == "NO"


def test_cli_plan_gpu_flags_what_does_not_fit(capsys):
    recipe = os.path.join(ROOT, "examples", "tiny_cpu", "recipe.yaml")
    assert main(["plan", recipe, "--no-files", "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "memory per GPU on h100-80gb" in out and out.rstrip().endswith("yes")
    assert main(["plan", recipe, "--no-files", "--gpu", "h300"]) == 2
    assert "--gpu='h300' is invalid: expected one of" in capsys.readouterr().err
    assert main(["plan", recipe, "--no-files", "--gpu", "a100-40gb", "model.num_layers=128",
                 "model.hidden_size=4096", "model.num_attention_heads=32"]) == 2
    assert "does not fit on a100-40gb" in capsys.readouterr().err


def test_a2a_needs_heads_divisible_by_the_all_to_all_group():
    # Llama-3-8B at TP4: 8 query heads and 2 KV groups per rank; a2a over CP=4 cannot split 2 groups
    par = ParallelConfig(tensor_model_parallel_size=4, context_parallel_size=4, cp_comm="a2a",
                         sequence_parallel=True, use_distributed_optimizer=True)
    problems = hardware_problems(fake_plan(par, seq_len=16384, dp=1, recompute="full", world=16), "h100-80gb")
    assert any("cp_comm='a2a' is invalid: all-to-all over 4 ranks" in p for p in problems)
    hier = ParallelConfig(tensor_model_parallel_size=4, context_parallel_size=4, cp_comm="a2a+p2p", cp_a2a_size=2,
                          sequence_parallel=True, use_distributed_optimizer=True)
    assert hardware_problems(fake_plan(hier, seq_len=16384, dp=1, recompute="full", world=16), "h100-80gb") == []
    assert hier.hierarchical_context_parallel_sizes == [2, 2]
