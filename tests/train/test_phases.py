"""A three-phase recipe: seq_len, rope (YaRN), data mix, LR segment (start_lr from the checkpoint) and
optimizer state change at phase boundaries; killed during the second phase and relaunched, it gives
the uninterrupted run's losses exactly. A branch anneal from the same checkpoint reproduces the phase."""

import json
import os

import pytest

from helpers.training import load_result, run

PHASES = [
    {"name": "stable", "steps": 3},
    {"name": "extend", "steps": 3, "seq_len": 64, "global_batch_size": 2,
     "rope": {"type": "yarn", "factor": 2, "original_max_position_embeddings": 32, "theta": 10000},
     "lr": {"style": "linear", "start_lr": "from_checkpoint", "min_lr": 0.0}},
    {"name": "anneal", "steps": 2, "optimizer_state": "reset",
     "lr": {"style": "linear", "peak_lr": 5.0e-4, "min_lr": 0.0},
     "eval": {"tasks": ["ppl"], "lengths": [32], "max_documents": 1, "num_buckets": 1, "use_matplotlib": False}},
]


@pytest.fixture
def three_phases(recipe_file, corpus):
    def make(**checkpoint):
        path = recipe_file(checkpoint={"load": "auto", "save_final": True, **checkpoint})
        import yaml

        data = yaml.safe_load(open(path))
        data["phases"] = [dict(p) for p in PHASES]
        # The anneal phase shifts the mix: a second stream (same files, its own name) joins at 50%.
        data["phases"][2]["data"] = {"sources": [{"name": "syn", "prefix": corpus, "weight": 1.0},
                                                 {"name": "curated", "prefix": corpus, "weight": 1.0}]}
        open(path, "w").write(yaml.safe_dump(data))
        return path

    return make


@pytest.mark.slow
def test_kill_in_second_phase_and_resume_equals_uninterrupted(tmp_path, three_phases):
    recipe = three_phases()
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    run(tmp_path / "straight", recipe, f"checkpoint.dir={tmp_path / 'straight_ckpt'}")
    straight = load_result(tmp_path / "straight")["default"]
    assert len(straight) == 8
    run(tmp_path / "first", recipe, "--exit-after-steps", "4")        # stops after step 1 of 'extend'
    state = json.load(open(os.path.join(ckpt, "iter_0000004", "megamid.json")))["state"]
    assert (state["phase"], state["phase_step"]) == ("extend", 1)
    run(tmp_path / "second", recipe)
    assert load_result(tmp_path / "first")["default"] + load_result(tmp_path / "second")["default"] == straight

    history = json.load(open(tmp_path / "straight" / "history_0.json"))
    assert [h["phase"] for h in history] == ["stable"] * 3 + ["extend"] * 3 + ["anneal"] * 2
    # start_lr from_checkpoint: 'extend' starts at the LR 'stable' ended with.
    assert history[3]["lr"] == pytest.approx(history[2]["lr"])
    assert history[5]["lr"] < history[3]["lr"]
    # The anneal mixes in the curated stream; its loss is reported per source.
    assert set(history[-1]["loss_by_source"]) == {"syn", "curated"}
    # Streams continue across phases: offsets only grow, and the final checkpoint records both.
    final = json.load(open(os.path.join(tmp_path / "straight_ckpt", "iter_0000008", "megamid.json")))["state"]
    extend = json.load(open(os.path.join(tmp_path / "straight_ckpt", "iter_0000006", "megamid.json")))["state"]
    stable = json.load(open(os.path.join(tmp_path / "straight_ckpt", "iter_0000003", "megamid.json")))["state"]
    assert final["data_start"] == extend["data_consumed"]
    assert extend["data_consumed"]["syn"] > extend["data_start"]["syn"] == stable["data_consumed"]["syn"] > 0
    assert final["data_consumed"]["curated"] > 0
    # Checkpoints record the rope they were trained with and the backends the model was built with.
    assert extend["rope"]["type"] == "yarn" and final["rope"] == {"type": "default", "theta": 10000.0}
    assert final["backends"] == {"spec": "local", "attention": "megamid", "rope_fusion": "none"}
    # TensorBoard scalars are written where tensorboard is installed (the dev extra installs it).
    pytest.importorskip("tensorboard")
    events = os.listdir(tmp_path / "straight_ckpt" / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


@pytest.mark.slow
def test_branch_anneal_starts_from_the_phase_boundary(tmp_path, three_phases):
    recipe = three_phases()
    ckpt = os.path.join(os.path.dirname(recipe), "ckpt")
    run(tmp_path / "main", recipe)
    main = load_result(tmp_path / "main")["default"]
    latest = open(os.path.join(ckpt, "latest")).read()
    main_eval = os.path.join(ckpt, "eval", "anneal", "step_2", "results.json")
    main_eval_written = os.stat(main_eval).st_mtime_ns
    run(tmp_path / "branch", recipe, "--from-phase", "anneal", "--branch", "b1")
    assert load_result(tmp_path / "branch")["default"] == main[-2:]
    assert open(os.path.join(ckpt, "latest")).read() == latest              # the main run is untouched
    assert os.path.isfile(os.path.join(ckpt, "branches", "b1", "latest"))
    # The branch's in-loop eval lands under the branch; the main run's results stay as they were.
    branch_eval = json.load(open(os.path.join(ckpt, "branches", "b1", "eval", "anneal", "step_2", "results.json")))
    assert branch_eval["phase"] == "anneal" and branch_eval["ppl"]["by_length"]["32"]["ppl_mean"] > 1
    assert os.stat(main_eval).st_mtime_ns == main_eval_written
