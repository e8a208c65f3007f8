"""The checkpoint directory protocol, in one place: write aside, prove, rename, point.

    CKPT_DIR/latest                  text: the name of the newest published checkpoint ("iter_0000200")
    CKPT_DIR/iter_0000200/           the checkpoint's files + megamid.json + MANIFEST.json
    CKPT_DIR/iter_0000300.partial/   a save in progress (or one that died): never read, removed on start
    CKPT_DIR/iter_0000100.deleting/  a pruned checkpoint being removed (or whose removal died): likewise

A save writes into `iter_N.partial/` (`begin`), then `publish` writes megamid.json and a manifest of
every file with its size and zlib.crc32 (streamed in 8 MiB blocks: ~2 GB/s on one core, from the page
cache the writer just filled), fsyncs the files and the directory, renames it to `iter_N/` and only
then replaces `latest` (temp file + fsync + os.replace + directory fsync). A process that dies
anywhere before that leaves the previous checkpoint as `latest`. Pruning renames `iter_N` to
`iter_N.deleting` before removing it, so a prune that dies half-way never leaves a half-deleted
checkpoint under a checkpoint's name. A checkpoint is complete only when its manifest verifies:
`latest`, `resolve`, `find_phase_end` and loading all verify before anything reads the weights.

Checkpoints written before manifests existed (no MANIFEST.json) are "legacy": they are verified as
far as their own files allow: megamid.json parses, and for a megatron dist checkpoint (metadata.json)
the torch DCP `.metadata` exists, reads, and every shard it references exists and is long enough to
hold the byte ranges it names. Checksums are not available for them.

Pure file-system code (torch is imported only to read a legacy checkpoint's DCP metadata): processes
and ranks are the caller's business. In a multi-rank job rank 0 calls begin/publish/prune/clean_stale
and the caller barriers; `verify` takes a `share` so ranks can split checksum reading, and a
Checkpointer takes the verify function to use (a collective one in training, see dist_state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zlib
from typing import Callable, Optional

from megamid.config.base import ConfigError

LATEST = "latest"
STATE_FILE = "megamid.json"
MANIFEST = "MANIFEST.json"
PARTIAL = ".partial"
DELETING = ".deleting"
ON_CORRUPT = ("fail", "previous")
_ITER_RE = re.compile(r"^iter_(\d{7})$")
_BLOCK = 8 << 20


class CheckpointError(ConfigError):
    """A missing, corrupt or incomplete checkpoint; the message names the file.

    A ConfigError (bad user input, not a bug) so that every command prints it as one line and exits 2."""


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---- files ------------------------------------------------------------------------------------------
def file_crc32(path: str) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def list_files(root: str) -> list[str]:
    """Every regular file under root, relative, sorted (the manifest itself excluded)."""
    out = []
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(parent, name), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def file_entries(root: str, names: list[str], fsync: bool = True) -> dict[str, dict]:
    """{name: {"size", "crc32"}} for files under root; fsyncs each one (its data reaches the disk before
    the checkpoint is published). Ranks may each call it on their share of a directory's files."""
    entries = {}
    for name in names:
        path = os.path.join(root, name)
        entries[name] = {"size": os.path.getsize(path), "crc32": file_crc32(path)}
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return entries


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_state(path: str) -> dict:
    """The megamid.json of checkpoint `path`."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise CheckpointError(f"{path} is not a megamid checkpoint: {STATE_FILE} is missing")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path}: corrupt, not valid JSON ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: corrupt, expected a JSON object")
    return state


# ---- verification -----------------------------------------------------------------------------------
def verify(path: str, checksums: bool = True, share: tuple[int, int] = (0, 1)) -> None:
    """Raises CheckpointError naming the first missing, truncated or changed file of checkpoint `path`.

    Every file's existence and size is checked; with checksums, the crc32 of the files whose index in
    the manifest is `share[0]` modulo `share[1]` (all of them by default). Legacy checkpoints (no
    manifest) get the checks the module docstring describes."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        _verify_legacy(path)
        return
    try:
        with open(manifest_path) as f:
            files = json.load(f)["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: corrupt ({exc!r})") from None
    for name, entry in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing (listed in {MANIFEST}); the checkpoint is incomplete")
        size = os.path.getsize(file)
        if size != entry["size"]:
            raise CheckpointError(f"{file}: {size} bytes, {MANIFEST} says {entry['size']}; the file is truncated "
                                  "or was changed after the save")
    if checksums:
        index, count = share
        for i, (name, entry) in enumerate(files.items()):
            if i % count == index and file_crc32(os.path.join(path, name)) != entry["crc32"]:
                raise CheckpointError(f"{os.path.join(path, name)}: checksum differs from {MANIFEST} "
                                      f"({entry['crc32']}); the file is corrupt")
    read_state(path)


def _verify_legacy(path: str) -> None:
    read_state(path)
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        return  # not a megatron dist checkpoint: nothing more that this module knows how to check
    dcp = os.path.join(path, ".metadata")
    if not os.path.isfile(dcp):
        raise CheckpointError(f"{dcp}: missing; the checkpoint is incomplete")
    try:
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(path).read_metadata().storage_data
    except Exception as exc:  # a truncated or foreign pickle: any exception means unreadable
        raise CheckpointError(f"{dcp}: unreadable ({type(exc).__name__}: {exc})") from None
    needed: dict[str, int] = {}
    for info in (storage or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(needed.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing (referenced by .metadata); the checkpoint is incomplete")
        if os.path.getsize(file) < end:
            raise CheckpointError(f"{file}: {os.path.getsize(file)} bytes, .metadata needs {end}; "
                                  "the file is truncated")


# ---- one directory, for tools ------------------------------------------------------------------------
def begin_dir(out: str) -> str:
    """A fresh `OUT.partial` sibling to write into (one left by a process that died is removed)."""
    partial = os.path.abspath(out).rstrip("/") + PARTIAL
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    return partial


def remove_dir(path: str) -> None:
    """Renames `path` to `path.deleting` before removing it: a removal that dies leaves no half-deleted
    directory under the original name."""
    doomed = path.rstrip("/") + DELETING
    if os.path.isdir(doomed):
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    _fsync_dir(os.path.dirname(os.path.abspath(doomed)))
    shutil.rmtree(doomed)


def publish_dir(partial: str, out: str, manifest: bool = True, entries: Optional[dict] = None,
                before_publish: Callable[[str], None] = lambda partial: None) -> str:
    """Makes `partial` durable and renames it to `out` (replacing an existing `out`).

    manifest: write MANIFEST.json of every file (entries already computed by other ranks are reused;
    the rest are computed here). An HF export folder is not a megamid checkpoint: manifest=False."""
    names = list_files(partial)
    if manifest:
        known = dict(entries or {})
        known.update(file_entries(partial, [n for n in names if n not in known]))
        missing = sorted(set(known) - set(names))
        if missing:
            raise CheckpointError(f"{os.path.join(partial, missing[0])}: reported written but not in the directory")
        _write_durable(os.path.join(partial, MANIFEST),
                       json.dumps({"version": 1, "checksum": "crc32", "files": {n: known[n] for n in names}}, indent=1))
    else:
        file_entries(partial, names)  # only for the fsyncs
    for parent, _, _ in os.walk(partial):
        _fsync_dir(parent)
    before_publish(partial)
    if os.path.isdir(out):
        remove_dir(out)
    os.replace(partial, out)
    _fsync_dir(os.path.dirname(os.path.abspath(out)))
    return out


# ---- a checkpoint directory -----------------------------------------------------------------------
class Checkpointer:
    """The checkpoints of one run directory.

    on_corrupt: what `latest()` does when the checkpoint `latest` names does not verify: "fail" raises
    naming the bad file; "previous" warns loudly and returns the newest checkpoint that verifies.
    verify_fn(path): the verification to use (default: this process checks every file, with checksums).
    """

    def __init__(self, directory: str, on_corrupt: str = "fail", verify_fn: Optional[Callable[[str], None]] = None,
                 warn: Callable[[str], None] = _warn):
        if on_corrupt not in ON_CORRUPT:
            raise ConfigError(f"checkpoint.on_corrupt={on_corrupt!r} is invalid: expected one of "
                              f"{', '.join(ON_CORRUPT)}")
        self.dir = directory
        self.on_corrupt = on_corrupt
        self.verify = verify_fn or verify
        self.warn = warn

    def _before_publish(self, partial: str, step: int) -> None:
        """Runs when a save's files are durable, just before they are published (tests inject faults here)."""

    # ---- writing ----
    def begin(self, step: int) -> str:
        """A fresh `iter_N.partial/` to save step `step` into."""
        os.makedirs(self.dir, exist_ok=True)
        partial = os.path.join(self.dir, iter_name(step) + PARTIAL)
        if os.path.isdir(partial):
            shutil.rmtree(partial)  # left by a save that died: never published, never `latest`
        os.makedirs(partial)
        return partial

    def publish(self, partial: str, step: int, state: dict, entries: Optional[dict] = None) -> str:
        """Writes `state` as megamid.json and the manifest into `partial`, renames it to `iter_N/` and
        points `latest` at it. `entries`: manifest entries other ranks computed for their files."""
        final = os.path.join(self.dir, iter_name(step))
        _write_durable(os.path.join(partial, STATE_FILE), json.dumps(state, indent=1))
        publish_dir(partial, final, entries=entries, before_publish=lambda p: self._before_publish(p, step))
        tmp = os.path.join(self.dir, LATEST + ".tmp")
        _write_durable(tmp, iter_name(step) + "\n")
        os.replace(tmp, os.path.join(self.dir, LATEST))
        _fsync_dir(self.dir)
        return final

    def prune(self, keep_last: int, keep: tuple = ()) -> list[str]:
        """Removes all but the newest `keep_last` checkpoints (never `latest`'s or those in `keep`)."""
        protected = set(keep) | {self._pointer() or ""}
        names = self.checkpoints()
        removed = [n for n in names[:-keep_last] if n not in protected] if keep_last else []
        for name in removed:
            remove_dir(os.path.join(self.dir, name))
        return removed

    def clean_stale(self) -> list[str]:
        """Removes what a dead process left: `*.partial` saves, `*.deleting` prunes, `latest.tmp`."""
        if not os.path.isdir(self.dir):
            return []
        stale = sorted(n for n in os.listdir(self.dir)
                       if n.endswith(PARTIAL) or n.endswith(DELETING) or n == LATEST + ".tmp")
        for name in stale:
            path = os.path.join(self.dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return stale

    # ---- reading ----
    def checkpoints(self) -> list[str]:
        """Names of the published checkpoints (iter_N with megamid.json), oldest first; not verified."""
        if not os.path.isdir(self.dir):
            return []
        return sorted(n for n in os.listdir(self.dir)
                      if _ITER_RE.match(n) and os.path.isfile(os.path.join(self.dir, n, STATE_FILE)))

    def _pointer(self) -> Optional[str]:
        pointer = os.path.join(self.dir, LATEST)
        if not os.path.isfile(pointer):
            return None
        with open(pointer, "rb") as f:
            return f.read(256).decode("utf-8", "replace").strip()

    def latest(self) -> Optional[str]:
        """The verified checkpoint `latest` names; None when there is no `latest`. See on_corrupt."""
        name = self._pointer()
        if name is None:
            return None
        pointer = os.path.join(self.dir, LATEST)
        try:
            if not _ITER_RE.match(name) or not os.path.isdir(os.path.join(self.dir, name)):
                raise CheckpointError(f"{pointer} names {name[:80]!r}, which is not a checkpoint directory here "
                                      "(expected iter_NNNNNNN); fix or remove the pointer")
            path = os.path.join(self.dir, name)
            self.verify(path)
            return path
        except CheckpointError as exc:
            if self.on_corrupt == "fail":
                raise CheckpointError(f"{exc} (checkpoint.on_corrupt=fail; 'previous' falls back to the newest "
                                      "checkpoint that verifies)") from None
            previous = self.newest_verified(exclude=(name,))
            if previous is None:
                raise CheckpointError(f"{exc}; and no other checkpoint in {self.dir} verifies") from None
            self.warn(f"CORRUPT CHECKPOINT: {exc}. checkpoint.on_corrupt=previous: using {previous} instead")
            return previous

    def _newest_verified(self, accept) -> Optional[str]:
        """The newest checkpoint that `accept(name, path)` takes and that verifies; others are skipped, loudly."""
        for name in reversed(self.checkpoints()):
            path = os.path.join(self.dir, name)
            try:
                if accept(name, path):
                    self.verify(path)
                    return path
            except CheckpointError as exc:
                self.warn(f"skipping {path}: {exc}")
        return None

    def newest_verified(self, exclude: tuple = ()) -> Optional[str]:
        return self._newest_verified(lambda name, path: name not in exclude)

    def find_phase_end(self, phase: str, phase_steps: int) -> Optional[str]:
        """The newest verified checkpoint saved at the last step of `phase`, or None."""
        def at_end(name, path):
            state = read_state(path).get("state") or {}
            return state.get("phase") == phase and state.get("phase_step") == phase_steps

        return self._newest_verified(at_end)


def resolve(path: str, field: str = "checkpoint", on_corrupt: str = "fail",
            verify_fn: Optional[Callable[[str], None]] = None) -> str:
    """A verified checkpoint directory from `path`: a checkpoint (iter_N, or a converter's output), or a
    directory with a `latest` pointer. Errors name `field`."""
    if os.path.isfile(os.path.join(path, LATEST)):
        return Checkpointer(path, on_corrupt, verify_fn).latest()
    if not os.path.isdir(path):
        raise CheckpointError(f"{field}={path!r} is invalid: no such checkpoint directory")
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise CheckpointError(f"{field}={path!r} is invalid: it is not a megamid checkpoint (expected a directory "
                              f"with {STATE_FILE}, or a checkpoint directory with a '{LATEST}' pointer)")
    (verify_fn or verify)(path)
    return path


__all__ = ["DELETING", "LATEST", "MANIFEST", "ON_CORRUPT", "PARTIAL", "STATE_FILE", "CheckpointError", "Checkpointer",
           "begin_dir", "file_entries", "iter_name", "list_files", "publish_dir", "read_state", "remove_dir",
           "resolve", "verify"]
