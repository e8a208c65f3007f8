"""python -m pytest -q tests/rope/test_rope_fusion.py

model.rope_fusion: which path applies RoPE (megamid.rope.fusion.rope_fusion_path, checked with CUDA
and TE assumed through its arguments), and on CPU, for every rope type, tiny models built on each path
give the logits of the unfused path and of transformers:
  te       the attention factor folded into softmax_scale = f^2 / sqrt(d), cos/sin unscaled (TE's kernel
           itself needs a GPU; megatron's unfused rotation stands in for it, with mscale 1);
  megamid  RopeFusedSelfAttention in the layer spec, Q and K rotated by the kernel's CPU loop,
with megatron's DotProductAttention and with megamid's core attention (both read the scale), after a
phase change too (set_rope to another scaling re-scales every layer). The models run in
tests/rope/fusion_driver.py, one subprocess per attention backend (megamid's CPU mode is process-global).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from megamid.config import ConfigError, ModelConfig
from megamid.rope.fusion import (
    describe_rope_fusion,
    folded_softmax_scale,
    pack_rope_inputs,
    rope_fusion_path,
    unpack_rope_inputs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "rope", "fusion_driver.py")
TOL = 1e-4  # as test_hf_logits.py: fp32 logits of magnitude ~10; a wrong scale or rope moves them by O(1)
FACTOR_ONE = ("default", "abf", "linear", "ntk", "dynamic", "llama3", "llama3_tied")


def tiny(**kw):
    return ModelConfig(**{**dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                                 vocab_size=50), **kw})


# ---- the decision, without megatron -------------------------------------------------------------
def test_the_model_uses_a_fused_path_when_cuda_is_present():
    cfg = tiny(rope={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    assert cfg.rope_fusion == "auto"
    assert rope_fusion_path(cfg, cuda=True, te=True) == "te"
    assert rope_fusion_path(cfg, cuda=True, te=False) == "megamid"
    assert rope_fusion_path(cfg, cuda=False, te=False) == "none"
    # CUDA without megamid._cuda built: megatron's path rather than the PyTorch reference
    assert rope_fusion_path(cfg, cuda=True, te=False, kernel_built=False) == "none"


def test_auto_takes_megamid_for_partial_rotary_under_te():
    # a later phase may bring an attention factor, which the softmax fold cannot carry with partial rotary
    cfg = tiny(rope={"type": "default", "partial_rotary_factor": 0.5})
    assert rope_fusion_path(cfg, cuda=True, te=True) == "megamid"


def test_explicit_choices():
    for choice in ("megamid", "none"):
        for cuda, te in ((False, False), (True, False), (True, True)):
            assert rope_fusion_path(tiny(rope_fusion=choice), cuda=cuda, te=te) == choice
    assert rope_fusion_path(tiny(rope_fusion="te"), cuda=True, te=True) == "te"
    with pytest.raises(ConfigError, match="model.rope_fusion='te' is invalid here"):
        rope_fusion_path(tiny(rope_fusion="te"), cuda=True, te=False)
    partial_yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                    "partial_rotary_factor": 0.5}
    with pytest.raises(ConfigError, match="cannot be folded into the softmax scale"):
        rope_fusion_path(tiny(rope_fusion="te", rope=partial_yarn), cuda=True, te=True)
    with pytest.raises(ConfigError, match="model.rope_fusion"):
        tiny(rope_fusion="fast")


def test_folded_scale_and_log_line():
    assert folded_softmax_scale(128, 1.0) == 1.0 / math.sqrt(128)  # megatron's default, bit for bit
    assert folded_softmax_scale(64, 1.5) == pytest.approx(2.25 / 8)
    assert "folded into the softmax scale" in describe_rope_fusion("te", 1.2)
    assert "megamid fused RoPE" in describe_rope_fusion("megamid")
    assert "unfused" in describe_rope_fusion("none")


def test_rope_inputs_round_trip_positions_as_the_kernel_sees_them():
    inv_freq = torch.rand(8)
    positions = torch.tensor([[0, 1], [1_048_575, 7], [(1 << 24) + 1, 3]])  # [s, b]; the last rounds in fp32
    packed = pack_rope_inputs(inv_freq, positions)
    got_inv, got_pos = unpack_rope_inputs(packed, 16, 3, 2)
    assert torch.equal(got_inv, inv_freq)
    assert torch.equal(got_pos.float(), positions.float())  # float(position) is all the angle uses
    assert unpack_rope_inputs(packed, 16, 4, 2)[1] is None  # not s * b positions: THD computes its own


# ---- the models, in a subprocess per core attention ---------------------------------------------
# every case with megamid's core attention; megatron's DotProductAttention (the same scale attribute) on
# a sample of them, to keep the suite's time down
SAMPLE = ["default", "yarn", "yarn_deepseek", "longrope", "longrope_partial_phi3", "yarn_qk_layernorm"]


@pytest.fixture(scope="module", params=["megamid", "megatron"])
def results(request):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEGAMID_ATTENTION": request.param}
    cases = SAMPLE if request.param == "megatron" else []
    proc = subprocess.run([sys.executable, DRIVER, *cases], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FUSION_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{DRIVER} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1].removeprefix("FUSION_RESULT "))
    out["_backend"] = {"megatron": "DotProductAttention", "megamid": "MegamidCoreAttention"}[request.param]
    return out


def _cases(results):
    return {k: v for k, v in results.items() if not k.startswith("_")}


def test_every_rope_type_gives_the_unfused_and_hf_logits_on_every_path(results):
    cases = _cases(results)
    assert len(cases) >= (13 if results["_backend"] == "MegamidCoreAttention" else len(SAMPLE))
    for case, paths in cases.items():
        for path in ("none", "te", "megamid"):
            if "error" in paths[path]:
                continue
            got = paths[path]
            assert got["core_modules"] == [results["_backend"]], (case, path, got["core_modules"])
            assert got["vs_none"] < TOL, f"{case} {path}: |logits - unfused| = {got['vs_none']}"
            assert got["vs_hf"] < TOL, f"{case} {path}: |logits - transformers| = {got['vs_hf']}"
        assert cases[case]["megamid"]["attention_modules"] == ["RopeFusedSelfAttention"]
        assert cases[case]["none"]["attention_modules"] == ["SelfAttention"]


def test_the_fold_puts_the_factor_in_every_layers_softmax_scale(results):
    for case, paths in _cases(results).items():
        te = paths["te"]
        if "error" in te:
            assert case == "longrope_partial_phi3" and "cannot be folded" in te["error"]
            continue
        want = te["attention_factor"] ** 2 * te["plain_scale"]
        assert te["config_scale"] == pytest.approx(want, rel=1e-12)
        assert te["core_scales"] == pytest.approx([want], rel=1e-12)
        for path in ("none", "megamid"):
            assert paths[path]["core_scales"] == [paths[path]["plain_scale"]]
        if case in FACTOR_ONE:  # factor 1: the fold changes nothing, bit for bit
            assert te["vs_none"] == 0.0, case
        else:
            assert te["attention_factor"] != 1.0  # the fold is exercised


def test_a_phase_change_updates_the_scale(results):
    for case, paths in _cases(results).items():
        te = paths["te"]
        if "after_switch_vs_none" not in te:
            continue
        factor = te["after_switch_factor"]
        assert factor > 1.2  # the switch brings YaRN's factor
        assert te["after_switch_core_scales"] == pytest.approx([factor ** 2 * te["plain_scale"]], rel=1e-12)
        for path in ("te", "megamid"):
            assert paths[path]["after_switch_vs_none"] < TOL, (case, path)
        assert te["stale_scale_diff"] > 100 * TOL, case  # layers left at the old scale would show


def test_megamid_path_gradients_recompute_bf16_and_thd(results):
    assert results["_grad_rel_diff"] < 1e-4
    if results["_backend"] == "MegamidCoreAttention":  # full recompute re-runs layers from the saved inputs
        assert results["_recompute_grad_rel_diff"] < 1e-4
    assert results["_thd_max_diff"] < 1e-5
    # bf16 against the fp32 model: the kernel (one rounding) is no worse than megatron's bf16 cos/sin path
    errors = results["_bf16_errors"]
    assert errors["megamid"] <= 1.25 * errors["none"] and errors["megamid"] < 0.1, errors


@pytest.mark.gpu
def test_fused_paths_on_cuda():
    # On a GPU the same models run CUDA's kernel (megamid) and, where TE imports, TE's fused RoPE (te).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, DRIVER, "yarn", "longrope", "longrope_partial_phi3"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FUSION_RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    results = json.loads(lines[-1].removeprefix("FUSION_RESULT "))
    for case, paths in _cases(results).items():
        for path in ("te", "megamid"):
            if "error" not in paths[path]:
                assert paths[path]["vs_none"] < 1e-3, (case, path, paths[path]["vs_none"])
                # a phase change reaches TE's attention (and its backends) through set_softmax_scale
                assert paths[path].get("after_switch_vs_none", 0.0) < 1e-3, (case, path)
    assert results["_grad_rel_diff"] < 1e-3 and results["_thd_max_diff"] < 1e-4
