"""Checks of a Megatron indexed dataset pair (PREFIX.idx + PREFIX.bin) before megatron opens it.

megatron-core's IndexedDataset asserts or fails inside numpy on a broken .idx and then raises again
from its own __del__; a .bin from another source with a plausible .idx is read silently. So the
header and the arrays are checked here first, and every error names the pair and what is wrong:

    .idx = b"MMIDIDX\\x00\\x00", version u64 = 1, dtype code u8, sequence count u64, document count u64,
           then int32 lengths [sequences], int64 byte pointers [sequences], int64 document indices
           [documents]; its size is exactly that.
    .bin = the tokens: the last pointer + last length x dtype size is the .bin's byte length.
"""

import os
import struct

import numpy as np

from megamid.data import DataError

INDEX_HEADER = b"MMIDIDX\x00\x00"
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
REBUILD = "rebuild the pair with `megamid data prepare`"


def check_indexed_pair(prefix: str, where: str = "") -> dict:
    """{sequences, documents, dtype} of PREFIX.idx/.bin; DataError naming both files if they disagree."""
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    head = f"{where}: " if where else ""
    for path in (idx, bin_):
        if os.path.isdir(path) or not os.path.isfile(path):
            raise DataError(f"{head}{path} not found; a source prefix needs PREFIX.bin and PREFIX.idx as written "
                            "by `megamid data prepare`")
    idx_size, bin_size = os.path.getsize(idx), os.path.getsize(bin_)
    with open(idx, "rb") as f:
        header = f.read(HEADER_BYTES)

    def bad(what: str):
        return DataError(f"{head}{idx} is not a valid index for {bin_}: {what}; {REBUILD}")

    if len(header) < HEADER_BYTES or header[:9] != INDEX_HEADER:
        raise bad(f"expected a Megatron indexed-dataset header ({INDEX_HEADER!r}, {HEADER_BYTES} bytes), "
                  f"found {header[:9]!r} in a {idx_size}-byte file")
    version, code, sequences, documents = struct.unpack("<QBQQ", header[9:])
    if version != 1:
        raise bad(f"version {version}, expected 1")
    if code not in DTYPES:
        raise bad(f"dtype code {code}, expected one of {sorted(DTYPES)}")
    expected = HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if idx_size != expected:
        raise bad(f"{idx_size} bytes, but its header's {sequences} sequences and {documents} document "
                  f"indices need {expected} (truncated or overwritten)")
    raw = np.memmap(idx, dtype=np.uint8, mode="r")
    lengths = np.frombuffer(raw, dtype=np.int32, count=sequences, offset=HEADER_BYTES)
    pointers = np.frombuffer(raw, dtype=np.int64, count=sequences, offset=HEADER_BYTES + 4 * sequences)
    doc_index = np.frombuffer(raw, dtype=np.int64, count=documents, offset=HEADER_BYTES + 12 * sequences)
    itemsize = np.dtype(DTYPES[code]).itemsize
    if documents < 1 or doc_index[0] != 0 or doc_index[-1] != sequences or np.any(np.diff(doc_index) < 0):
        raise bad(f"its {documents} document indices do not run from 0 to its {sequences} sequences")
    if sequences and (np.any(lengths < 0) or pointers[0] != 0
                      or np.any(pointers[1:] != pointers[:-1] + lengths[:-1].astype(np.int64) * itemsize)):
        raise bad("its sequence pointers are not the running sum of its lengths")
    need = int(pointers[-1]) + int(lengths[-1]) * itemsize if sequences else 0
    if bin_size != need:
        raise DataError(f"{head}{bin_} ({bin_size} bytes) and {idx} do not belong together: the index's "
                        f"{sequences} sequences ({documents - 1} documents) of {np.dtype(DTYPES[code]).name} "
                        f"tokens end at byte {need}; the .bin is {'truncated' if bin_size < need else 'longer'} "
                        f"or comes from another source; {REBUILD}")
    del raw
    return {"sequences": int(sequences), "documents": int(documents) - 1, "dtype": np.dtype(DTYPES[code])}
