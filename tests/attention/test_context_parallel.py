"""pytest tests/attention/test_context_parallel.py

Two gloo processes, one torchrun launch: context parallelism (CP=2) with KV all-gather and with the ring
gives the single-process losses and weights (so gradients) on the same global batches, under YaRN
positions, for plain and packed (document-masked) rows, with and without a sliding window. CP ranks hold whole replicas of the weights,
initialised on CPU from the same seed as the single process, so no base checkpoint is needed; the only
differences are floating-point summation orders.
"""

import pytest
import torch

from helpers import training as _train

YARN = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "theta": 10000}
PACK = "data.pack=true"
# a sliding window shorter than a CP chunk (seq_len 32 = 4 chunks of 8): whole key blocks fall outside it
WINDOW = "model.sliding_window=6"
# CP layout -> the single-process layout it must reproduce
LAYOUTS = {
    "parallel.context_parallel_size=2;parallel.cp_comm=allgather": "",
    "parallel.context_parallel_size=2;parallel.cp_comm=ring": "",
    f"parallel.context_parallel_size=2;parallel.cp_comm=allgather;{PACK}": PACK,
    f"parallel.context_parallel_size=2;parallel.cp_comm=ring;{PACK}": PACK,
    f"parallel.context_parallel_size=2;parallel.cp_comm=allgather;{WINDOW}": WINDOW,
    f"parallel.context_parallel_size=2;parallel.cp_comm=ring;{PACK};{WINDOW}": f"{PACK};{WINDOW}",
}
SINGLE = ["", PACK, WINDOW, f"{PACK};{WINDOW}"]


def _layout_args(layouts):
    args = []
    for layout in layouts:
        args += ["--layout", layout]
    return args


@pytest.mark.slow
def test_context_parallel_matches_single_process(tmp_path, recipe_file):
    recipe = recipe_file(model={"rope": YARN})
    _train.run(tmp_path / "single", recipe, *_layout_args(SINGLE))
    _train.run(tmp_path / "cp", recipe, *_layout_args(LAYOUTS), nproc=2)
    single, cp = _train.load_result(tmp_path / "single"), _train.load_result(tmp_path / "cp")
    plain, packed = single["default"], single[PACK]
    assert len(plain) == 4 and plain[-1] < plain[0]
    assert max(abs(a - b) for a, b in zip(plain, packed)) > 1e-3, "document masking changed nothing"
    assert max(abs(a - b) for a, b in zip(plain, single[WINDOW])) > 1e-3, "the sliding window changed nothing"
    for i, (layout, base_layout) in enumerate(LAYOUTS.items()):
        want = single[base_layout or "default"]
        got = cp[layout]
        assert len(got) == len(want), layout
        for step, (g, w) in enumerate(zip(got, want)):
            assert abs(g - w) <= 1e-6 * abs(w), (layout, step, g, w)
        ref = _train.load_weights(tmp_path / "single", SINGLE.index(base_layout))[0]
        for rank in range(2):   # CP ranks hold full replicas of the weights
            weights = _train.load_weights(tmp_path / "cp", i, rank)[0]
            for name, value in ref.items():
                torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=f"{layout} {name}")
