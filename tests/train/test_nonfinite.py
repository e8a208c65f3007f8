"""pytest tests/train/test_nonfinite.py

A run whose loss or gradients turn non-finite (an absurd LR) skips those steps without updating the
weights, logs each skip with its reason, and stops with a one-line error and exit status 2 after
training.max_consecutive_skips; no checkpoint holds non-finite weights and `latest` never names one.
"""

import json
import os
import subprocess
import sys

import pytest
import torch


def _weights_finite(ckpt: str, tmp_path) -> bool:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f"{os.path.basename(ckpt)}.pt"
    dcp_to_torch_save(ckpt, str(out))
    state = torch.load(out, weights_only=False)
    weights = [v for k, v in state.items() if k.startswith(("embedding.", "decoder.", "output_layer."))
               and torch.is_tensor(v) and v.is_floating_point()]
    assert len(weights) >= 8, sorted(state)[:10]
    return all(bool(torch.isfinite(t).all()) for t in weights)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_nonfinite_steps_are_skipped_and_the_run_stops(tmp_path, recipe_file, dtype):
    recipe = recipe_file(model={"dtype": dtype},
                         training={"train_steps": 12, "lr": {"style": "constant", "peak_lr": 1.0e4}},
                         checkpoint={"save_interval": 1, "save_final": True, "load": "auto"})
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    proc = subprocess.run([sys.executable, "-m", "megamid.cli", "train", recipe], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("megamid train: error:")]
    assert len(error) == 1 and "consecutive steps skipped" in error[0] and "max_consecutive_skips=3" in error[0]
    metrics = [json.loads(line) for line in open(os.path.join(ckpt, "metrics.jsonl"))]
    skipped = [m for m in metrics if m["skipped"]]
    assert len(skipped) == 4 and all(m["skip_reason"].startswith("non-finite") for m in skipped)
    assert [m["step"] for m in skipped] == list(range(skipped[0]["step"], skipped[0]["step"] + 4))
    assert len(metrics) < 12                       # it stopped
    latest = open(os.path.join(ckpt, "latest")).read().strip()
    assert latest == f"iter_{skipped[-2]['step']:07d}"   # the last step saved; the stopping step is not
    assert _weights_finite(os.path.join(ckpt, latest), tmp_path)
