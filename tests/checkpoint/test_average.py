"""pytest tests/checkpoint/test_average.py

Checkpoint averaging on real checkpoints of a tiny model (one driver subprocess, ~30 s): identical
inputs come back bit for bit, two give the elementwise (weighted) mean, another model or rope is refused
naming both, and the output starts a run as `base`.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from megamid.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "checkpoint", "average_driver.py")


@pytest.fixture(scope="module")
def averaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("average")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)  # a world of one, whatever launched pytest
    proc = subprocess.run([sys.executable, DRIVER, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "result.json") as f:
        result = json.load(f)
    return torch.load(out / "weights.pt", weights_only=True), result


def test_identical_checkpoints_average_to_themselves_bit_exactly(averaged):
    weights, _ = averaged
    assert weights["same"].keys() == weights["a"].keys()
    for k, v in weights["a"].items():
        assert torch.equal(weights["same"][k], v), k


def test_two_checkpoints_average_to_the_elementwise_mean(averaged):
    weights, _ = averaged
    a, b = weights["a"], weights["b"]
    assert any(not torch.equal(a[k], b[k]) for k in a), "the two checkpoints should differ"
    for k in a:
        torch.testing.assert_close(weights["mean"][k], (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7)


def test_weights_give_the_weighted_mean_through_the_tool(averaged):
    weights, result = averaged
    rc, err = result["weighted"]
    assert rc == 0, err
    a, b = weights["a"], weights["b"]
    for k in a:
        torch.testing.assert_close(weights["weighted"][k], 0.75 * a[k] + 0.25 * b[k], rtol=1e-6, atol=1e-7)


def test_another_model_is_refused_naming_the_field(averaged):
    _, result = averaged
    rc, err = result["mismatch"]
    assert rc == 2
    assert "model.num_layers=1 in" in err and "differs from model.num_layers=2 in" in err and "same model" in err


def test_another_rope_is_refused_naming_both(averaged):
    _, result = averaged
    rc, err = result["rope_mismatch"]
    assert rc == 2
    assert "rope={'type': 'yarn'" in err and "other_rope" in err and "differs from rope={'type': 'default'" in err


def test_the_average_is_a_usable_base_with_its_provenance(averaged):
    _, result = averaged
    assert math.isfinite(result["base_run_loss"])
    state = result["mean_state"]
    assert state["layout"] is None and len(state["state"]["averaged_from"]) == 2
    assert state["state"]["weights"] == [0.5, 0.5]
    # the record eval and export read: the inputs' model, rope and tokenizer, and where it came from
    assert state["record_version"] == 1 and state["provenance"]["kind"] == "average"
    assert state["provenance"]["sources"] == state["state"]["averaged_from"]
    assert state["rope"] == {"type": "default", "theta": 10000.0} and state["tokenizer"] == "byte"
    from megamid.data.tokenizer import ByteTokenizer

    byte = ByteTokenizer()
    assert state["special_ids"] == {"bos": None, "eos": byte.eod, "pad": byte.pad}  # the inputs' (the tokenizer's)


@pytest.mark.parametrize("weights, count, message", [
    ([1.0], 2, "expected 2 values"),
    ([0.0, 0.0], 2, "positive sum"),
    ([-1.0, 2.0], 2, "numbers >= 0"),
])
def test_bad_weights_are_rejected(weights, count, message):
    from megamid.checkpoint.average import normalised_weights

    with pytest.raises(ConfigError, match=message):
        normalised_weights(weights, count)


def _record(tokenizer, eos=256):
    return {"tokenizer": tokenizer, "special_ids": {"bos": None, "eos": eos, "pad": 257}}


def test_another_tokenizer_is_refused_naming_both(tmp_path):
    from megamid.checkpoint.average import common_tokenizer

    sp_a, sp_b, sp_copy = tmp_path / "a.model", tmp_path / "b.model", tmp_path / "copy" / "a.model"
    sp_a.write_bytes(b"vocab a")
    sp_b.write_bytes(b"vocab b")
    sp_copy.parent.mkdir()
    sp_copy.write_bytes(b"vocab a")
    notes = []
    common_tokenizer(["x", "y"], [_record(str(sp_a)), _record(str(sp_copy))], notes.append)  # same file contents
    common_tokenizer(["x", "y"], [_record("byte"), _record("byte")], notes.append)
    assert notes == []
    with pytest.raises(ConfigError, match=r"special_ids=\{'bos': None, 'eos': 2, 'pad': 257\} in 'y' differs from "
                                          r"special_ids=\{'bos': None, 'eos': 256, 'pad': 257\} in 'x'"):
        common_tokenizer(["x", "y"], [_record("byte"), _record("byte", eos=2)], notes.append)
    with pytest.raises(ConfigError, match=f"tokenizer='{sp_b}' in 'y' differs from tokenizer='{sp_a}' in 'x': only "
                                          "checkpoints with the same tokenizer can be averaged"):
        common_tokenizer(["x", "y"], [_record(str(sp_a)), _record(str(sp_b))], notes.append)
    with pytest.raises(ConfigError, match="tokenizer='byte' in 'y' differs"):
        common_tokenizer(["x", "y"], [_record("gone/sp.model"), _record("byte")], notes.append)
    # names that cannot be compared from here: allowed, and said
    common_tokenizer(["x", "y"], [_record("gone/a.model"), _record("elsewhere/a.model")], notes.append)
    assert len(notes) == 1 and "cannot be compared from here" in notes[0]
