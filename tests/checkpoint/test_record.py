"""pytest tests/checkpoint/test_record.py

The checkpoint record (megamid.checkpoint.record): built, read back, and derived for checkpoints written
before it (converted bases, training steps, branches, soups); the start_lr: from_checkpoint check plan
needs; and the exported config.json / generation_config.json of a record (special ids, rope, window).
"""

import json

import pytest

from megamid.checkpoint.record import (
    base_has_lr,
    checkpoint_record,
    first_phase_lr_problem,
    load_record,
    read_record,
    special_ids_from_hf,
)
from megamid.checkpoint.checkpointer import resolve as resolve_checkpoint
from megamid.config import ConfigError

MODEL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 128,
         "max_position_embeddings": 64, "rope": {"type": "default", "theta": 10000.0}}
YARN = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "theta": 10000.0}


def test_a_record_round_trips_and_checks_its_fields():
    record = checkpoint_record(MODEL, "tok.json", {"bos": 1, "eos": [2, 9], "pad": None}, YARN,
                               {"kind": "train", "sources": ["base"], "phase": "long"})
    meta = {"step": 3, "state": {}, "config": {}, **json.loads(json.dumps(record))}
    back = read_record(meta)
    assert back["special_ids"] == {"bos": 1, "eos": [2, 9], "pad": None} and back["rope"] == YARN
    assert back["model"] == MODEL and back["provenance"]["kind"] == "train" and back["record_version"] == 1
    with pytest.raises(ConfigError, match="provenance.kind='copied' is invalid"):
        checkpoint_record(MODEL, "byte", {}, YARN, {"kind": "copied"})
    with pytest.raises(ConfigError, match="special_ids"):
        checkpoint_record(MODEL, "byte", {"eod": 3}, YARN, {"kind": "train"})
    with pytest.raises(ConfigError, match="newer than this megamid"):
        read_record({**meta, "record_version": 99})


def test_records_of_checkpoints_written_before_it():
    hf = {"vocab_size": 128, "bos_token_id": 1, "eos_token_id": 2}
    base = read_record({"state": {"source": "hf", "hf_dir": "/hf"}, "hf_config": hf,
                        "config": {"model": MODEL, "tokenizer": "/b/tok.json"}})
    assert base["provenance"] == {"kind": "hf-import", "sources": ["/hf"]}
    assert base["special_ids"] == {"bos": 1, "eos": 2, "pad": None} and base["rope"] == MODEL["rope"]
    recipe = {"model": MODEL, "tokenizer": "byte", "base": "/b", "phases": [{"name": "a"}, {"name": "long", "rope": YARN}]}
    trained = read_record({"step": 4, "state": {"phase": "long", "lr": 1e-4}, "config": recipe}, "/run/ckpt/iter_0000004")
    assert trained["rope"] == YARN and trained["provenance"]["kind"] == "train"
    assert trained["provenance"]["sources"] == ["/b"] and trained["special_ids"]["eos"] is None
    branch = read_record({"state": {"phase": "a"}, "config": recipe}, "/run/ckpt/branches/b1/iter_0000004")
    assert branch["provenance"]["kind"] == "branch" and branch["rope"] == MODEL["rope"]
    soup = read_record({"state": {"averaged_from": ["/x", "/y"], "weights": [0.5, 0.5]}, "config": recipe})
    assert soup["provenance"]["kind"] == "average" and soup["provenance"]["sources"] == ["/x", "/y"]
    with pytest.raises(ConfigError, match="config.model"):
        read_record({"state": {}, "config": {}})


def test_an_old_soup_takes_the_rope_its_inputs_trained_with(tmp_path):
    run = tmp_path / "run" / "iter_0000004"
    run.mkdir(parents=True)
    recipe = {"model": MODEL, "tokenizer": "byte", "phases": [{"name": "long", "rope": YARN}]}
    (run / "megamid.json").write_text(json.dumps({"state": {"phase": "long"}, "config": recipe}))
    (tmp_path / "run" / "latest").write_text("iter_0000004\n")
    soup = tmp_path / "soup"
    soup.mkdir()
    (soup / "megamid.json").write_text(json.dumps({"state": {"averaged_from": [str(run)]}, "config": recipe}))
    assert load_record(str(soup))["rope"] == YARN  # config.model.rope would be the default rope
    assert resolve_checkpoint(str(tmp_path / "run")) == str(run)
    with pytest.raises(ConfigError, match="not a megamid checkpoint"):
        resolve_checkpoint(str(tmp_path))


def test_generation_config_ids_win_over_config_json():
    ids = special_ids_from_hf({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None},
                              {"eos_token_id": [2, 7]})
    assert ids == {"bos": 1, "eos": [2, 7], "pad": None}


def test_from_checkpoint_on_the_first_phase_needs_a_base_with_an_lr():
    converted = {"state": {"source": "hf", "hf_dir": "/hf"}, "config": {"model": MODEL}}
    assert not base_has_lr(converted)
    problem = first_phase_lr_problem("anneal", "/bases/llama", converted)
    assert "phases[anneal].lr.start_lr='from_checkpoint' is invalid" in problem and "hf-import" in problem
    assert "random weights" in first_phase_lr_problem("anneal", None, None)
    trained = {"state": {"phase": "a", "lr": 3e-4}, "config": {"model": MODEL}}
    assert base_has_lr(trained) and first_phase_lr_problem("anneal", "/run", trained) is None


def test_exported_config_carries_ids_rope_and_the_extended_window():
    from megamid.checkpoint.hf_conversion import export_config

    record = checkpoint_record(MODEL, "byte", {"bos": None, "eos": 5, "pad": 6}, YARN, {"kind": "train"},
                               {"do_sample": False})
    config, generation = export_config(record)
    assert config["eos_token_id"] == 5 and config["pad_token_id"] == 6 and "bos_token_id" not in config
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_scaling"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 128  # original 64 x factor 2
    assert generation == {"do_sample": False, "eos_token_id": 5, "pad_token_id": 6, "_from_model_config": False}
    # ids missing from the record come from its tokenizer (byte: pad 256, eod 257)
    byte = checkpoint_record({**MODEL, "vocab_size": 258}, "byte", {}, MODEL["rope"], {"kind": "average"})
    config, _ = export_config(byte)
    assert (config["eos_token_id"], config["pad_token_id"], config["max_position_embeddings"]) == (257, 256, 64)
