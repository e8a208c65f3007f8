"""A phase that changes the rope rebuilds every cached cos/sin table: the switched model's logits equal
a freshly built model's with the same weights (and differ from before the switch). bf16 runs through
Float16Module."""

import json
import os
import subprocess
import sys

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rope_switch_driver.py")


def test_rope_switch_equals_fresh_model_and_bf16_runs(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, DRIVER, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("yarn", "dynamic", "llama3", "longrope"):
        assert results[name]["switched_vs_fresh"] == 0.0, (name, results[name])
        assert results[name]["switched_vs_before"] > 1e-2, (name, results[name])   # the switch took effect
    bf16 = results["bf16"]
    assert bf16["dtype"] == "torch.bfloat16" and bf16["grad_finite"] and 0 < bf16["loss"] < 20
