"""The checkpoint directory protocol on plain files: publish, resolve, verify, prune, stale clean-up, on_corrupt."""

import json
import os
import shutil

import pytest

from megamid.checkpoint import checkpointer as cp
from megamid.checkpoint.checkpointer import CheckpointError, Checkpointer
from megamid.config.base import ConfigError


def save(ckpt: Checkpointer, step: int, phase="p", phase_step=None, payload=b"weights" * 100) -> str:
    partial = ckpt.begin(step)
    os.makedirs(os.path.join(partial, "sub"))
    with open(os.path.join(partial, "__0_0.distcp"), "wb") as f:
        f.write(payload + bytes([step % 256]))
    with open(os.path.join(partial, "sub", "common.pt"), "wb") as f:
        f.write(b"common")
    state = {"step": step, "state": {"phase": phase, "phase_step": step if phase_step is None else phase_step}}
    return ckpt.publish(partial, step, state)


def latest_name(root) -> str:
    return open(os.path.join(root, "latest")).read().strip()


def test_publish_writes_manifest_and_moves_latest(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    path = save(ckpt, 3)
    assert path == str(tmp_path / "iter_0000003") and latest_name(tmp_path) == "iter_0000003"
    manifest = json.load(open(tmp_path / "iter_0000003" / cp.MANIFEST))
    assert sorted(manifest["files"]) == ["__0_0.distcp", "megamid.json", "sub/common.pt"]
    assert manifest["files"]["sub/common.pt"]["size"] == 6 and manifest["checksum"] == "crc32"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000003", "latest"]  # no partial, no latest.tmp
    assert ckpt.latest() == path and cp.resolve(str(tmp_path)) == path and cp.resolve(path) == path
    save(ckpt, 5)
    assert ckpt.latest() == str(tmp_path / "iter_0000005")


def test_begin_removes_a_stale_partial_of_its_step(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    os.makedirs(tmp_path / "iter_0000002.partial" / "junk")
    partial = ckpt.begin(2)
    assert os.listdir(partial) == []


def test_a_save_that_dies_before_publishing_leaves_latest_alone(tmp_path):
    class Dies(Checkpointer):
        def _before_publish(self, partial, step):
            raise KeyboardInterrupt  # stands in for a process killed at this point

    save(Checkpointer(str(tmp_path)), 2)
    with pytest.raises(KeyboardInterrupt):
        save(Dies(str(tmp_path)), 4)
    assert latest_name(tmp_path) == "iter_0000002" and not (tmp_path / "iter_0000004").exists()
    assert (tmp_path / "iter_0000004.partial" / cp.MANIFEST).exists()  # everything written, nothing published
    assert Checkpointer(str(tmp_path)).clean_stale() == ["iter_0000004.partial"]
    assert sorted(os.listdir(tmp_path)) == ["iter_0000002", "latest"]


def test_prune_keeps_the_newest_and_latest(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    for step in (1, 2, 3, 4):
        save(ckpt, step)
    assert ckpt.prune(2) == ["iter_0000001", "iter_0000002"]
    assert ckpt.checkpoints() == ["iter_0000003", "iter_0000004"]
    with open(tmp_path / "latest", "w") as f:  # latest is never pruned, even when older than the newest N
        f.write("iter_0000003\n")
    save(ckpt, 5)
    with open(tmp_path / "latest", "w") as f:
        f.write("iter_0000003\n")
    assert ckpt.prune(1) == ["iter_0000004"]
    assert ckpt.checkpoints() == ["iter_0000003", "iter_0000005"]


def test_an_interrupted_prune_is_never_chosen_and_is_cleaned(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path))
    save(ckpt, 1, phase="a", phase_step=1)
    save(ckpt, 2, phase="b", phase_step=1)
    real_rmtree = shutil.rmtree

    def dies_half_way(path, *args, **kwargs):  # removes one shard, then the process "dies"
        os.remove(os.path.join(path, "__0_0.distcp"))
        raise KeyboardInterrupt

    monkeypatch.setattr(cp.shutil, "rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(1)
    monkeypatch.setattr(cp.shutil, "rmtree", real_rmtree)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001.deleting", "iter_0000002", "latest"]
    assert ckpt.checkpoints() == ["iter_0000002"]
    assert ckpt.find_phase_end("a", 1) is None          # a branch never starts from it
    assert ckpt.find_phase_end("b", 1) == str(tmp_path / "iter_0000002")
    assert ckpt.clean_stale() == ["iter_0000001.deleting"]
    assert sorted(os.listdir(tmp_path)) == ["iter_0000002", "latest"]


def test_find_phase_end_skips_a_half_deleted_checkpoint_under_its_own_name(tmp_path):
    # what the old in-place prune left: megamid.json present, a shard gone
    warnings = []
    ckpt = Checkpointer(str(tmp_path), warn=warnings.append)
    save(ckpt, 4, phase="a", phase_step=4)
    save(ckpt, 8, phase="b", phase_step=4)
    os.remove(tmp_path / "iter_0000004" / "__0_0.distcp")
    assert ckpt.find_phase_end("a", 4) is None
    assert "iter_0000004/__0_0.distcp: missing" in warnings[0]


@pytest.mark.parametrize("damage, named", [
    ("truncate", "__0_0.distcp: 3 bytes, MANIFEST.json says"),
    ("delete", "__0_0.distcp: missing"),
    ("flip", "__0_0.distcp: checksum differs"),
    ("state", "megamid.json: "),
    ("delete_common", "sub/common.pt: missing"),
])
def test_verify_names_the_damaged_file(tmp_path, damage, named):
    path = save(Checkpointer(str(tmp_path)), 1)
    shard = os.path.join(path, "__0_0.distcp")
    if damage == "truncate":
        open(shard, "r+b").truncate(3)
    elif damage == "delete":
        os.remove(shard)
    elif damage == "flip":
        data = bytearray(open(shard, "rb").read())
        data[10] ^= 1
        open(shard, "wb").write(bytes(data))
    elif damage == "state":
        open(os.path.join(path, "megamid.json"), "w").write("{not json")
    else:
        os.remove(os.path.join(path, "sub", "common.pt"))
    with pytest.raises(CheckpointError, match=r"iter_0000001/" + named.replace(".", r"\.")) as exc:
        cp.verify(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(CheckpointError):
        cp.resolve(str(tmp_path))
    if damage == "flip":
        cp.verify(path, checksums=False)  # same size: only the checksum sees it
        cp.verify(path, share=(1, 3))     # and only from the rank whose share holds the shard (index 0)


def test_latest_pointing_nowhere_or_at_garbage(tmp_path):
    save(Checkpointer(str(tmp_path)), 1)
    for content in ("iter_0000009\n", "\x00\xff garbage"):
        (tmp_path / "latest").write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str)
                                          else content)
        with pytest.raises(CheckpointError, match=r"latest names .* fix or remove the pointer") as exc:
            Checkpointer(str(tmp_path)).latest()
        assert isinstance(exc.value, ConfigError) and "\n" not in str(exc.value)


def test_on_corrupt_previous_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path):
    warnings = []
    ckpt = Checkpointer(str(tmp_path), on_corrupt="previous", warn=warnings.append)
    for step in (1, 2, 3):
        save(ckpt, step)
    open(tmp_path / "iter_0000003" / "__0_0.distcp", "r+b").truncate(1)
    os.remove(tmp_path / "iter_0000002" / "megamid.json")
    assert ckpt.latest() == str(tmp_path / "iter_0000001")
    assert "CORRUPT CHECKPOINT" in warnings[0] and "iter_0000003/__0_0.distcp" in warnings[0]
    with pytest.raises(CheckpointError, match="iter_0000003/__0_0.distcp.*on_corrupt=fail"):
        Checkpointer(str(tmp_path)).latest()
    shutil.rmtree(tmp_path / "iter_0000001")
    with pytest.raises(CheckpointError, match="no other checkpoint .* verifies"):
        ckpt.latest()
    with pytest.raises(ConfigError, match="checkpoint.on_corrupt='later' is invalid"):
        Checkpointer(str(tmp_path), on_corrupt="later")


def test_resolve_errors_name_the_field(tmp_path):
    with pytest.raises(CheckpointError, match=r"base='.*nope' is invalid: no such checkpoint directory"):
        cp.resolve(str(tmp_path / "nope"), "base")
    with pytest.raises(CheckpointError, match=r"--ckpt='.*' is invalid: it is not a megamid checkpoint"):
        cp.resolve(str(tmp_path), "--ckpt")


def test_one_directory_publish_for_tools(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    open(os.path.join(out, "old"), "w").write("old")
    partial = cp.begin_dir(out)
    assert partial == out + ".partial"
    open(os.path.join(partial, "megamid.json"), "w").write("{}")
    cp.publish_dir(partial, out)
    assert sorted(os.listdir(out)) == [cp.MANIFEST, "megamid.json"] and sorted(os.listdir(tmp_path)) == ["out"]
    assert cp.resolve(out) == out
    hf = str(tmp_path / "hf")
    partial = cp.begin_dir(hf)
    open(os.path.join(partial, "config.json"), "w").write("{}")
    cp.publish_dir(partial, hf, manifest=False)  # an HF folder gets no manifest
    assert os.listdir(hf) == ["config.json"]


def _legacy_dist_checkpoint(path) -> None:
    """A checkpoint as megamid wrote it before manifests: torch DCP files + metadata.json + megamid.json."""
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.arange(1000, dtype=torch.float32)}, checkpoint_id=str(path), no_dist=True)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (path / "megamid.json").write_text('{"step": 1, "state": {}}')


def test_legacy_checkpoints_without_manifest_still_verify_what_they_can(tmp_path):
    path = tmp_path / "iter_0000001"
    _legacy_dist_checkpoint(path)
    (tmp_path / "latest").write_text("iter_0000001\n")
    assert cp.resolve(str(tmp_path)) == str(path)
    shard = next(n for n in os.listdir(path) if n.endswith(".distcp"))
    open(path / shard, "r+b").truncate(100)
    with pytest.raises(CheckpointError, match=shard + r": 100 bytes, .metadata needs \d+; the file is truncated"):
        cp.verify(str(path))
    os.remove(path / shard)
    with pytest.raises(CheckpointError, match=shard + r": missing \(referenced by .metadata\)"):
        cp.verify(str(path))
    os.remove(path / ".metadata")
    with pytest.raises(CheckpointError, match=r"iter_0000001/.metadata: missing"):
        cp.verify(str(path))
    (path / "megamid.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"iter_0000001/megamid.json: corrupt, not valid JSON"):
        cp.verify(str(path))


def test_checkpoint_error_is_a_one_line_config_error():
    assert issubclass(CheckpointError, ConfigError)


def test_the_cli_prints_a_bad_latest_as_one_line(tmp_path, capsys):
    from megamid.cli import main

    save(Checkpointer(str(tmp_path)), 1)
    (tmp_path / "latest").write_bytes(b"\x00\xff garbage")
    assert main(["eval", str(tmp_path), "--tasks", "passkey", "--lengths", "320"]) == 2
    err = capsys.readouterr().err.strip()
    assert "latest names" in err and "fix or remove the pointer" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
