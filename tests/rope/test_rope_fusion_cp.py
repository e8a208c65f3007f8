"""pytest tests/rope/test_rope_fusion_cp.py   (slow: two gloo processes)

model.rope_fusion=megamid in training: single-process losses equal the unfused path's, and context
parallelism (CP=2, plain and packed rows) gives the single-process losses with megamid's kernel rotating
each rank's dual-chunk shard (its CPU loop here). Same harness as tests/attention/test_context_parallel.py.
"""

import pytest

from helpers import training as _train

YARN = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "theta": 10000}
FUSED, PACK = "model.rope_fusion=megamid", "data.pack=true"
SINGLE = ["model.rope_fusion=none", FUSED, f"{FUSED};{PACK}"]
CP = {f"parallel.context_parallel_size=2;{FUSED}": FUSED,
      f"parallel.context_parallel_size=2;parallel.cp_comm=ring;{FUSED};{PACK}": f"{FUSED};{PACK}"}


def _layout_args(layouts):
    return [arg for layout in layouts for arg in ("--layout", layout)]


@pytest.mark.slow
def test_megamid_rope_in_training_and_under_context_parallelism(tmp_path, recipe_file):
    recipe = recipe_file(model={"rope": YARN})
    _train.run(tmp_path / "single", recipe, *_layout_args(SINGLE))
    _train.run(tmp_path / "cp", recipe, *_layout_args(CP), nproc=2)
    single, cp = _train.load_result(tmp_path / "single"), _train.load_result(tmp_path / "cp")
    unfused, fused = single["model.rope_fusion=none"], single[FUSED]
    assert len(fused) == 4 and fused[-1] < fused[0]
    for step, (g, w) in enumerate(zip(fused, unfused)):
        assert abs(g - w) <= 1e-5 * abs(w), (step, g, w)  # the kernel's fp32 rotation against torch's
    for layout, base in CP.items():
        for step, (g, w) in enumerate(zip(cp[layout], single[base])):
            assert abs(g - w) <= 1e-6 * abs(w), (layout, step, g, w)
