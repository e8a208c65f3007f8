"""A directory of HF safetensors files, read and written one tensor at a time.

Reading: `model.safetensors`, or the shards a `model.safetensors.index.json` names. Each file's JSON header
is parsed and checked (dtype, shape against byte range, ranges inside the file); `get(name)` reads just that
tensor's bytes into a buffer it owns. Files are not memory-mapped: a mapping would keep every page read so
far resident in this process until it is closed, so converting a 16 GB model would show 16 GB of RSS.
Nothing is unpickled.

Writing: the file layout is planned up front from (name, dtype, shape), so each file's header can be
written first and tensors streamed after it in plan order: peak memory is one tensor, whatever the model
size. The format (8-byte little-endian header length, JSON header with data offsets, raw little-endian
bytes) is safetensors' own; `safetensors.safe_open` and transformers read the result.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import torch
from torch import Tensor

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


class CheckpointFileError(ValueError):
    """A missing, unreadable or inconsistent file; the message names the file (and tensor)."""


_DTYPES_FROM_ST = {v: k for k, v in _ST_DTYPES.items()} | {"I8": torch.int8, "I16": torch.int16, "BOOL": torch.bool}


def read_header(path: str) -> tuple[int, dict[str, dict]]:
    """(offset of the data section, {tensor name: {dtype, shape, data_offsets}}) of a safetensors file,
    checked so that every tensor's byte range matches its dtype and shape and lies inside the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointFileError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 << 20):
            raise CheckpointFileError(f"{path}: not a safetensors file (header length {length} for a {size}-byte file)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFileError(f"{path}: not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    start, data_size = 8 + length, size - 8 - length
    for name, info in header.items():
        try:
            dtype = _DTYPES_FROM_ST[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFileError(f"{path}: tensor {name} has an unreadable entry {info!r} ({exc!r}); dtypes "
                                      f"that load: {', '.join(sorted(_DTYPES_FROM_ST))}") from None
        nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise CheckpointFileError(f"{path}: tensor {name} ({info['dtype']} {shape}) has byte range [{begin}, "
                                      f"{end}), expected {nbytes} bytes inside the {data_size}-byte data section")
    return start, header


class SafetensorsReader:
    """Tensor names, shapes and data of the safetensors weights in one directory."""

    def __init__(self, directory: str):
        index_path, single = os.path.join(directory, INDEX), os.path.join(directory, SINGLE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f).get("weight_map")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise CheckpointFileError(f"{index_path}: not a JSON object with a 'weight_map' ({exc})") from None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointFileError(f"{index_path}: expected a non-empty 'weight_map'")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            weight_map, files = None, [SINGLE]
        else:
            found = sorted(n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth", ".safetensors")))
            raise CheckpointFileError(f"{directory}: no {SINGLE} or {INDEX} (found: {found or 'no weight files'}); "
                                      "only safetensors weights convert (save with safe_serialization=True)")
        self.directory = directory
        self._headers: dict[str, tuple[int, dict]] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                raise CheckpointFileError(f"{path}: missing ({INDEX} lists it)")
            self._headers[name] = read_header(path)
        self.file_of = {}
        for name, (_, header) in self._headers.items():
            for key in header:
                self.file_of[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.file_of.get(key) != name:
                    raise CheckpointFileError(f"{index_path}: maps {key} to {name}, which does not hold it")

    def keys(self) -> list[str]:
        return list(self.file_of)

    def _entry(self, name: str) -> tuple[str, int, dict]:
        file = self.file_of[name]
        start, header = self._headers[file]
        return os.path.join(self.directory, file), start, header[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[2]["shape"])

    def get(self, name: str, rows: tuple[int, int] | None = None) -> Tensor:
        """The tensor `name`, or its rows [start, stop) along dim 0, read into memory of its own (one read
        of that byte range: rows of a row-major tensor are contiguous bytes)."""
        path, start, info = self._entry(name)
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        if rows is not None:
            first, stop = rows
            if not shape or not 0 <= first <= stop <= shape[0]:
                raise CheckpointFileError(f"{path}: rows [{first}, {stop}) of tensor {name} of shape {shape}")
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end, shape[0] = begin + first * row_bytes, begin + stop * row_bytes, stop - first
        dtype = _DTYPES_FROM_ST[info["dtype"]]
        raw = torch.empty(end - begin, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(memoryview(raw.numpy())) != end - begin:
                raise CheckpointFileError(f"{path}: ends inside tensor {name}")
        return raw.view(dtype).reshape(shape) if raw.numel() else torch.empty(shape, dtype=dtype)


def _plan_files(entries: list[tuple[str, torch.dtype, tuple]], max_file_bytes: int) -> list[list[tuple]]:
    files, size = [[]], 0
    for name, dtype, shape in entries:
        nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        if files[-1] and size + nbytes > max_file_bytes:
            files.append([])
            size = 0
        files[-1].append((name, dtype, tuple(shape), nbytes))
        size += nbytes
    return files


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class SafetensorsWriter:
    """Writes tensors, in the planned order, into `model.safetensors` or `model-0000i-of-0000n.safetensors`
    files of at most max_file_bytes each (plus the index when there are several)."""

    def __init__(self, directory: str, entries: list[tuple[str, torch.dtype, tuple]], max_file_bytes: int = 5 << 30,
                 metadata: dict[str, str] | None = None):
        self.directory = directory
        self._files = _plan_files(entries, max_file_bytes)
        n = len(self._files)
        self._names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(fi, entry) for fi, entries_ in enumerate(self._files) for entry in entries_]
        self._next = 0
        self._handle = None
        self._open_index = -1

    def write(self, name: str, tensor: Tensor) -> None:
        if self._next >= len(self._queue):
            raise CheckpointFileError(f"{self.directory}: {name} was not planned (all planned tensors written)")
        file_index, (want, dtype, shape, nbytes) = self._queue[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise CheckpointFileError(f"{self.directory}: expected {want} {dtype} {list(shape)} next, got {name} "
                                      f"{tensor.dtype} {list(tensor.shape)}")
        if file_index != self._open_index:
            self._start_file(file_index)
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        self._handle.write(memoryview(data.numpy()))
        self._next += 1
        if self._next == len(self._queue) or self._queue[self._next][0] != file_index:
            self._handle.close()
            self._handle = None

    def _start_file(self, file_index: int) -> None:
        header, offset = {"__metadata__": self._metadata}, 0
        for name, dtype, shape, nbytes in self._files[file_index]:
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._handle = open(os.path.join(self.directory, self._names[file_index]), "wb")
        self._handle.write(struct.pack("<Q", len(raw)) + raw)
        self._open_index = file_index

    def close(self) -> list[str]:
        """Checks everything planned was written; writes the index for several files. Returns the file names."""
        if self._next != len(self._queue):
            missing = self._queue[self._next][1][0]
            raise CheckpointFileError(f"{self.directory}: {len(self._queue) - self._next} planned tensors were not "
                                      f"written (next: {missing})")
        if len(self._names) > 1:
            weight_map = {name: self._names[fi] for fi, (name, *_rest) in self._queue}
            total = sum(entry[3] for _, entry in self._queue)
            with open(os.path.join(self.directory, INDEX), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
        return list(self._names)


__all__ = ["CheckpointFileError", "INDEX", "SINGLE", "SafetensorsReader", "SafetensorsWriter", "read_header"]
