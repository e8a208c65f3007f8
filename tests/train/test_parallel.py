"""Two gloo processes: TP=2, PP=2, interleaved PP and DP=2 each give the single-process losses.

One torchrun launch trains all four layouts in turn (re-initialising megatron's parallel state), to
keep the multi-process cost of the suite to one launch. Every run starts from the same base
checkpoint (saved by a single process, resharded by dist_checkpointing on load), and the loss is
summed per token over the global batch, so the only differences are floating-point summation orders.
"""

import pytest

from helpers.training import load_result, run

LAYOUTS = {
    "parallel.tensor_model_parallel_size=2": 2e-6,
    "parallel.pipeline_model_parallel_size=2": 2e-6,
    "parallel.pipeline_model_parallel_size=2;parallel.virtual_pipeline_model_parallel_size=2": 2e-6,
    "parallel.use_distributed_optimizer=false": 2e-6,   # DP=2 (the world of 2 left to data parallelism)
}


@pytest.mark.slow
def test_layouts_match_single_process(tmp_path, recipe_file):
    init = recipe_file(checkpoint={"load": "none", "save_final": False})
    run(tmp_path / "init", init, f"checkpoint.dir={tmp_path / 'base'}", "--exit-after-steps", "0")
    recipe = recipe_file(base=str(tmp_path / "base"))
    run(tmp_path / "single", recipe)
    baseline = load_result(tmp_path / "single")["default"]
    args = []
    for layout in LAYOUTS:
        args += ["--layout", layout]
    run(tmp_path / "two", recipe, *args, nproc=2)
    results = load_result(tmp_path / "two")
    import json

    history = json.load(open(tmp_path / "two" / f"history_{len(LAYOUTS) - 1}.json"))
    assert history[-1]["gns"] is not None and history[-1]["gns"] > 0  # DP=2 gives a noise-scale estimate
    assert len(baseline) == 4 and baseline[-1] < baseline[0]
    for layout, rtol in LAYOUTS.items():
        losses = results[layout]
        assert len(losses) == len(baseline), layout
        for step, (got, want) in enumerate(zip(losses, baseline)):
            assert abs(got - want) <= rtol * abs(want), (layout, step, got, want)


PHASES = "phases=[{name: a, steps: 2}, {name: b, steps: 2%s}]"


@pytest.mark.slow
def test_layout_change_between_phases_reshards_exactly(tmp_path, recipe_file):
    """Phase a runs DP=2, phase b TP=2 (rebuilt, resharded reload of a's weights and Adam state);
    the same two phases at DP=2 throughout give the same losses."""
    recipe = recipe_file(training={"lr": {"style": "constant", "peak_lr": 1.0e-3}})
    changed = PHASES % ", parallel: {tensor_model_parallel_size: 2}"
    run(tmp_path / "two", recipe, "--layout", PHASES % "", "--layout", changed, nproc=2)
    results = load_result(tmp_path / "two")
    same, moved = results[PHASES % ""], results[changed]
    assert len(same) == len(moved) == 4
    for step, (got, want) in enumerate(zip(moved, same)):
        assert abs(got - want) <= 2e-6 * abs(want), (step, got, want)
