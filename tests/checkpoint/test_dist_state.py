"""megatron save/load through the Checkpointer: no non-finite checkpoint is published, damaged checkpoints are
refused before megatron reads them (naming the file), and the Adam `step` fix-up touches torch's Adam only."""

import json
import os
import subprocess
import sys

import pytest
import torch

from megamid.checkpoint import dist_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "checkpoint", "dist_state_driver.py")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_state")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)  # a world of one, whatever launched pytest
    proc = subprocess.run([sys.executable, DRIVER, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "result.json") as f:
        return json.load(f)


def test_non_finite_weights_are_never_published(result):
    assert result["save_1"] == "ok"
    assert result["save_nan"].startswith("refusing to save step 2 to ")
    assert "weight decoder.layers.1.mlp.linear_fc2.weight (rank 0) holds NaN or inf" in result["save_nan"]
    assert result["after_nan"] == {"listing": ["iter_0000001", "latest"], "latest": "iter_0000001"}


@pytest.mark.parametrize("case, message", [
    ("truncated_shard", r"iter_0000001/__0_0\.distcp: \d+ bytes, MANIFEST\.json says \d+"),
    ("deleted_shard", r"iter_0000001/__0_0\.distcp: missing \(listed in MANIFEST\.json\)"),
    ("deleted_metadata", r"iter_0000001/\.metadata: missing \(listed in MANIFEST\.json\)"),
    ("corrupt_state", r"iter_0000001/megamid\.json: \d+ bytes, MANIFEST\.json says \d+"),
    ("truncated_shard_legacy", r"iter_0000001/__0_0\.distcp: \d+ bytes, \.metadata needs \d+; the file is truncated"),
    ("deleted_shard_legacy", r"iter_0000001/__0_0\.distcp: missing \(referenced by \.metadata\)"),
    ("deleted_metadata_legacy", r"iter_0000001/\.metadata: missing"),
    ("corrupt_state_legacy", r"iter_0000001/megamid\.json: corrupt, not valid JSON"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file(result, case, message):
    import re

    assert result["load_good"] == "ok"
    assert re.search(message, result[case]), result[case]
    assert f"/{case}/" in result[case]


def test_latest_naming_a_missing_directory(result):
    assert "latest names 'iter_0000042', which is not a checkpoint directory here" in result["latest_missing_dir"]


class _Wrapper:
    """The part of a megatron optimizer wrapper that the Adam-step fix-ups read."""

    def __init__(self, inner):
        self.optimizer, self.config = inner, None

    @staticmethod
    def init_state_fn(inner, config):
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))


class FusedAdamLike(torch.optim.Optimizer):
    """Keeps `step` in its param groups, as TE's FusedAdam does."""

    def __init__(self, params):
        super().__init__(params, {"lr": 1e-3, "step": 0})


@pytest.mark.parametrize("cls, per_param_step", [(torch.optim.AdamW, True), (torch.optim.Adam, True),
                                                  (FusedAdamLike, False)])
def test_adam_step_fix_up_is_for_torch_adam_only(cls, per_param_step):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    wrapper = _Wrapper(cls(params))
    dist_state._create_adam_state(wrapper)
    assert all(("step" in s) == per_param_step for s in wrapper.optimizer.state.values())
    dist_state._restore_adam_steps(wrapper, {"param_groups": [{"step": 7}]})
    steps = [s.get("step") for s in wrapper.optimizer.state.values()]
    if per_param_step:
        assert [float(s) for s in steps] == [7.0, 7.0] and steps[0] is not steps[1]
    else:
        assert steps == [None, None]  # a per-param step is what TE's FusedAdam.state_dict() broke on
