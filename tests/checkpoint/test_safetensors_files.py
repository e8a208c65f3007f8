"""python -m pytest -q tests/checkpoint/test_safetensors_files.py

megamid's safetensors reader (explicit reads, no mapping) and writer (planned, streamed) against the
safetensors package: the same tensors both ways for every dtype the converters meet, one file or several
with an index, and damaged files rejected with the file and tensor named.
"""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megamid.checkpoint.safetensors_files import CheckpointFileError, SafetensorsReader, SafetensorsWriter


def tensors():
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=gen).to(torch.bfloat16),
            "b.weight": torch.randn(7, generator=gen).to(torch.float16),
            "c.weight": torch.randn(2, 2, 2, generator=gen),
            "d.index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "e.scalar": torch.tensor(1.5), "f.empty": torch.zeros(0, 4)}


def test_reader_returns_what_safetensors_wrote(tmp_path):
    want = tensors()
    save_file(want, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reader = SafetensorsReader(str(tmp_path))
    assert sorted(reader.keys()) == sorted(want)
    for name, t in want.items():
        got = reader.get(name)
        assert got.dtype == t.dtype and reader.shape(name) == tuple(t.shape) and torch.equal(got, t)
        got.add_(1)  # its own memory, writable (not a view of a read-only file mapping)


@pytest.mark.parametrize("max_file_bytes", [1 << 20, 64])
def test_writer_output_reads_back_in_safetensors_and_in_the_reader(tmp_path, max_file_bytes):
    want = tensors()
    writer = SafetensorsWriter(str(tmp_path), [(n, t.dtype, tuple(t.shape)) for n, t in want.items()], max_file_bytes)
    for name, t in want.items():
        writer.write(name, t)
    files = writer.close()
    assert (len(files) > 1) == (max_file_bytes == 64) and (tmp_path / "model.safetensors.index.json").exists() == (
        len(files) > 1)
    for file in files:
        with safe_open(tmp_path / file, framework="pt") as f:
            for name in f.keys():
                assert torch.equal(f.get_tensor(name), want[name])
    reader = SafetensorsReader(str(tmp_path))
    assert all(torch.equal(reader.get(n), t) for n, t in want.items())


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    writer = SafetensorsWriter(str(tmp_path), [("x", torch.float32, (2,)), ("y", torch.float32, (3,))])
    with pytest.raises(CheckpointFileError, match="expected x torch.float32 \\[2\\] next, got y"):
        writer.write("y", torch.zeros(3))
    writer.write("x", torch.zeros(2))
    with pytest.raises(CheckpointFileError, match="1 planned tensors were not written \\(next: y\\)"):
        writer.close()


def _write_raw(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"\x01\x02"), "shorter than its 8-byte header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}"), "header is not JSON"),
    (lambda p: _write_raw(p, [1, 2]), "header is not a JSON object"),
    (lambda p: _write_raw(p, {"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "tensor w has an unreadable entry.*dtypes that load"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
     "tensor w \\(F32 \\[3\\]\\) has byte range \\[0, 8\\), expected 12 bytes"),
    (lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
     "inside the 8-byte data section"),
])
def test_damaged_files_are_named(tmp_path, make, match):
    make(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointFileError, match="model.safetensors: .*" + match):
        SafetensorsReader(str(tmp_path))


def test_bad_index_is_named(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "part.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text("[not json")
    with pytest.raises(CheckpointFileError, match="index.json: not a JSON object"):
        SafetensorsReader(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"v": "part.safetensors"}}))
    with pytest.raises(CheckpointFileError, match="maps v to part.safetensors, which does not hold it"):
        SafetensorsReader(str(tmp_path))
