"""examples/llama3_8b_128k: every phase of both variants fits on 80 GB H100s (megamid plan --gpu)."""

import os

import pytest

from megamid.cli import main
from megamid.config import load_recipe
from megamid.recipe.fit import hardware_problems, phase_memory
from megamid.recipe.plan import plan_recipe

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "examples", "llama3_8b_128k")
EIGHT = os.path.join(HERE, "recipe.yaml")
SIXTY_FOUR = os.path.join(HERE, "recipe_64gpu.yaml")


@pytest.mark.parametrize("recipe,world", [(EIGHT, 8), (EIGHT, 64), (SIXTY_FOUR, 64)])
def test_every_phase_fits_on_h100(recipe, world):
    plan = plan_recipe(load_recipe(recipe), world_size=world, check_files=False)
    assert hardware_problems(plan, "h100-80gb") == []
    memories = phase_memory(plan, "h100-80gb")
    assert [m.name for m in memories] == ["anneal8k", "ctx32k", "ctx128k"]
    assert all(m.fits for m in memories)
    assert all(m.estimate.total_gib < 75 for m in memories)   # headroom for what the estimate leaves out


def test_eight_gpu_variant_uses_full_recompute_and_needs_it():
    plan = plan_recipe(load_recipe(EIGHT), world_size=8, check_files=False)
    assert all(p.recompute.granularity == "full" for p in plan.phases)
    without = plan_recipe(load_recipe(EIGHT, ["training.recompute=selective"]), world_size=8, check_files=False)
    problems = hardware_problems(without, "h100-80gb")
    assert len(problems) == 1 and problems[0].startswith("phases[ctx128k] does not fit on h100-80gb")


def test_sixty_four_gpu_variant_is_bridges_layout():
    plan = plan_recipe(load_recipe(SIXTY_FOUR), world_size=64, check_files=False)
    assert [r.layout for r in plan.phases] == ["TP1xPP1xCP2xDP32", "TP4xPP2xCP2xDP4", "TP4xPP2xCP8xDP1"]
    assert [r.parallel.sequence_parallel for r in plan.phases] == [False, True, True]
    assert all(r.recompute.granularity == "none" and r.parallel.use_distributed_optimizer for r in plan.phases)
    # the same phases, budgets, rope and data as the 8-GPU variant
    eight = plan_recipe(load_recipe(EIGHT), world_size=8, check_files=False)
    assert [(r.steps, r.seq_len, r.rope, r.shares_start) for r in plan.phases] == [
        (r.steps, r.seq_len, r.rope, r.shares_start) for r in eight.phases]
    assert plan.phases[2].rope["type"] == "yarn"


@pytest.mark.parametrize("args", [[EIGHT, "--world-size", "8"], [EIGHT, "--world-size", "64"],
                                  [SIXTY_FOUR, "--world-size", "64"]])
def test_plan_command_shows_every_phase_fitting(args, capsys):
    assert main(["plan", *args, "--gpu", "h100-80gb", "--no-files"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = lines[lines.index(next(l for l in lines if l.startswith("memory per GPU"))) + 3:]
    assert [r.split()[0] for r in rows] == ["anneal8k", "ctx32k", "ctx128k"]
    assert all(r.split()[-1] == "yes" for r in rows)
