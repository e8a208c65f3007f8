"""Documents read from local text files: what `megamid data prepare` and `train-tokenizer` both consume.

- A .jsonl / .jsonl.gz line is one document (`text_key` field); any other file (optionally .gz) is
  one document as a whole.
- Encoding policy: inputs must be UTF-8 (a leading BOM is dropped; newlines are universal, as in text mode). A file that is not is refused,
  naming the file and the byte offset (in the decompressed stream for .gz) of the first invalid byte,
  never decoded with replacement characters silently: convert it first (e.g. `iconv -f latin1 -t utf-8`).
"""

import gzip
import json
import os

from megamid.data import DataError

VALID_INPUTS = "valid inputs: existing text, .jsonl or .jsonl.gz files"


def check_input(path: str) -> None:
    if os.path.isdir(path):
        raise DataError(f"input {path!r} is a directory; {VALID_INPUTS} (list the files, e.g. {path}/*.jsonl)")
    if not os.path.isfile(path):
        raise DataError(f"input {path!r} not found; {VALID_INPUTS}")


def _decode(path: str, raw: bytes, offset: int) -> str:
    """UTF-8 with universal newlines (\r\n and \r become \n), as text-mode open() reads."""
    try:
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        gz = " of the decompressed stream" if path.endswith(".gz") else ""
        raise DataError(f"input {path!r} is not UTF-8: byte 0x{raw[exc.start]:02x} at byte offset "
                        f"{offset + exc.start}{gz} ({exc.reason}); inputs must be UTF-8, convert the file first "
                        "(e.g. iconv -f latin1 -t utf-8)") from None


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read(f, path: str) -> bytes:
    try:
        return f.read()
    except (OSError, EOFError) as exc:  # a .gz that is not gzip, or truncated
        raise DataError(f"input {path!r} cannot be read as {'gzip' if path.endswith('.gz') else 'a file'}: "
                        f"{exc}") from None


def _lines(f, path: str):
    try:
        offset = 0
        for line in f:
            yield offset, line
            offset += len(line)
    except (OSError, EOFError) as exc:
        raise DataError(f"input {path!r} cannot be read as gzip: {exc}") from None


def iter_documents(path: str, text_key: str = "text", quality_key=None, min_quality=None, prompt_key=None):
    """Yield (text or None, reason) per document of one file; reason is None for a kept document.
    prompt_key: JSONL only; each kept document is then a (prompt, text) pair of strings."""
    check_input(path)
    name = path[:-3] if path.endswith(".gz") else path
    if not name.endswith(".jsonl"):
        if prompt_key is not None:
            raise DataError(f"input {path!r} is invalid with prompt_key={prompt_key!r}: a prompt/answer split "
                            "needs JSONL inputs (.jsonl or .jsonl.gz), one object per line with both fields")
        with _open_binary(path) as f:
            yield _decode(path, _read(f, path), 0), None
        return
    with _open_binary(path) as f:
        for line_no, (offset, raw) in enumerate(_lines(f, path), 1):
            line = _decode(path, raw, offset)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"input {path!r} line {line_no}: not valid JSON ({exc}); "
                                "expected one JSON object per line") from None
            for key in (text_key,) if prompt_key is None else (prompt_key, text_key):
                if not isinstance(record.get(key) if isinstance(record, dict) else None, str):
                    raise DataError(f"input {path!r} line {line_no}: no string field {key!r}; fields present: "
                                    f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
            text = record[text_key]
            if quality_key is not None:
                score = record.get(quality_key)
                if not isinstance(score, (int, float)) or isinstance(score, bool) or score < min_quality:
                    yield None, "quality"
                    continue
            yield (text if prompt_key is None else (record[prompt_key], text)), None
