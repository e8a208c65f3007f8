"""Text, JSONL and .jsonl.gz files -> one Megatron indexed dataset (PREFIX.bin, PREFIX.idx) + stats.

Run through the CLI: `megamid data prepare --input a.jsonl b.txt --tokenizer byte --output corpus/x`.

- A .jsonl / .jsonl.gz line is one document (`text_key` field); any other file (optionally .gz) is
  one document as a whole. Inputs must be UTF-8 (megamid.data.documents: a file that is not is refused
  naming the byte offset of the first invalid byte).
- Optional quality filter: keep JSONL documents whose `quality_key` field is >= `min_quality`.
- Optional prompt/answer split (`prompt_key`, JSONL only): a document is the `prompt_key` field followed by
  the `text_key` field, each tokenized on its own and joined as ids; PREFIX.lossmask.bin/.idx (uint8, one
  per token) marks the answer and its EOD with 1 and the prompt with 0, so a source with `loss_mask: true`
  trains on the answers only. Deduplication then hashes the pair.
- Exact deduplication by a 128-bit BLAKE2 hash of the text, across all inputs (first copy kept).
- Tokenisation runs in worker processes over chunks of documents; results come back in order, so
  the output is byte-identical for any number of workers. Every document gets EOD appended and is
  written as one sequence with megatron-core's IndexedDatasetBuilder.
- PREFIX.stats.json: per input file and in total documents, tokens, dropped (empty / quality /
  duplicate), a power-of-two token-length histogram, and max_token_id (the dataset's vocab check).
"""

import hashlib
import json
import multiprocessing
import os

import numpy as np

from megamid.config.data import LOSS_MASK_SUFFIX
from megamid.data import DataError
from megamid.data.documents import check_input, iter_documents
from megamid.data.tokenizer_files import load_tokenizer
from megamid.data.token_stream import stats_path

CHUNK_DOCS = 256  # documents per worker task: large enough to amortise pickling, small for balance


def length_bin(n_tokens: int) -> str:
    """Power-of-two bucket label: '<=64', '<=128', ..."""
    return f"<={max(64, 1 << max(int(n_tokens) - 1, 0).bit_length())}"


_worker_tokenizer = None  # one tokenizer per worker process, set by the pool initializer


def _init_worker(spec: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(spec)


def _encode(tok, doc):
    """(ids, prompt tokens) of a document: a text, or a (prompt, answer) pair tokenized part by part."""
    if isinstance(doc, str):
        return np.asarray(tok.encode(doc), dtype=np.int64), 0
    prompt, answer = (tok.encode(part) for part in doc)
    return np.asarray(list(prompt) + list(answer), dtype=np.int64), len(prompt)


def _tokenize_chunk(docs):
    return [_encode(_worker_tokenizer, d) for d in docs]


def _chunks(inputs, text_key, quality_key, min_quality, stats, seen, prompt_key=None):
    """Kept documents as (input index, text or (prompt, answer)) chunks; updates drop counters in `stats`."""
    chunk = []
    for k, path in enumerate(inputs):
        for text, reason in iter_documents(path, text_key, quality_key, min_quality, prompt_key):
            answer = text[1] if isinstance(text, tuple) else text
            if reason is None and not answer.strip():
                reason = "empty"
            if reason is None:
                key = text if isinstance(text, str) else json.dumps(list(text))
                digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
                reason = "duplicate" if digest in seen else None
                seen.add(digest)
            if reason is not None:
                stats[k]["dropped"][reason] = stats[k]["dropped"].get(reason, 0) + 1
                continue
            chunk.append((k, text))
            if len(chunk) == CHUNK_DOCS:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def prepare(inputs, tokenizer: str, output_prefix: str, workers: int = 1, text_key: str = "text",
            quality_key=None, min_quality=None, dedup: bool = True, prompt_key=None) -> dict:
    """Tokenize `inputs` into output_prefix.bin/.idx (with prompt_key also output_prefix.lossmask.bin/.idx);
    returns (and writes) the stats dict."""
    if not inputs:
        raise DataError("prepare: no --input files given; valid: text, .jsonl or .jsonl.gz files")
    for path in inputs:
        check_input(path)
    if quality_key is not None and min_quality is None:
        raise DataError(f"quality_key={quality_key!r} needs min_quality (keep documents scoring >= it)")
    tok = load_tokenizer(tokenizer)
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder  # heavy: after the checks

    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    dtype = DType.optimal_dtype(tok.vocab_size)
    # Written under .partial names and renamed at the end: a failed prepare leaves an existing pair intact.
    names = [output_prefix + ext for ext in (".bin", ".idx")]
    if prompt_key is not None:
        names += [output_prefix + LOSS_MASK_SUFFIX + ext for ext in (".bin", ".idx")]
    partial = {name: name + ".partial" for name in names}
    builder = IndexedDatasetBuilder(partial[names[0]], dtype=dtype)
    # the mask's (builder, .idx path), with prompt_key
    mask = (IndexedDatasetBuilder(partial[names[2]], dtype=np.uint8), partial[names[3]]) if prompt_key else None
    try:
        out = _tokenize(builder, inputs, tok, tokenizer, output_prefix, partial[names[1]], workers, text_key,
                        quality_key, min_quality, dedup, str(np.dtype(dtype)), prompt_key, mask)
    except BaseException:
        for b in (builder, mask[0] if mask else None):
            if b is not None:
                b.data_file.close()
        for path in partial.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for name, path in partial.items():
        os.replace(path, name)
    with open(stats_path(output_prefix), "w") as f:
        json.dump(out, f, indent=1)
    return out


def _tokenize(builder, inputs, tok, tokenizer, output_prefix, idx_path, workers, text_key, quality_key,
              min_quality, dedup, dtype, prompt_key=None, mask=None) -> dict:
    stats = [{"documents": 0, "tokens": 0, "dropped": {}, "length_histogram": {}, "max_token_id": -1}
             for _ in inputs]
    if mask is not None:
        for s in stats:
            s["scored_tokens"] = 0
    seen = set() if dedup else _NeverSeen()
    chunks = _chunks(list(inputs), text_key, quality_key, min_quality, stats, seen, prompt_key)

    def write(chunk, token_lists):
        for (k, _), (ids, n_prompt) in zip(chunk, token_lists):
            doc = np.append(ids, tok.eod)
            builder.add_document(doc, [len(doc)])
            s = stats[k]
            if mask is not None:
                scored = np.ones(len(doc), dtype=np.uint8)
                scored[:n_prompt] = 0
                mask[0].add_document(scored, [len(doc)])
                s["scored_tokens"] += len(doc) - n_prompt
            s["documents"] += 1
            s["tokens"] += len(doc)
            s["max_token_id"] = max(s["max_token_id"], int(doc.max()))
            label = length_bin(len(doc))
            s["length_histogram"][label] = s["length_histogram"].get(label, 0) + 1

    if workers <= 1:
        for chunk in chunks:
            write(chunk, [_encode(tok, t) for _, t in chunk])
    else:
        with multiprocessing.get_context("fork").Pool(workers, _init_worker, (tokenizer,)) as pool:
            pending = []  # keep the chunk beside its result: imap preserves order
            feed = ([t for _, t in c] for c in _remember(chunks, pending))
            for token_lists in pool.imap(_tokenize_chunk, feed):
                write(pending.pop(0), token_lists)
    builder.finalize(idx_path)
    if mask is not None:
        mask[0].finalize(mask[1])
    return _summary(inputs, tok, tokenizer, output_prefix, stats, dtype)


class _NeverSeen(set):
    """dedup=False: a set that forgets, so no document counts as a duplicate."""

    def add(self, item):
        pass


def _remember(chunks, pending):
    for chunk in chunks:
        pending.append(chunk)
        yield chunk


def _summary(inputs, tok, tokenizer, output_prefix, stats, dtype) -> dict:
    total = {"documents": 0, "tokens": 0, "dropped": {}, "length_histogram": {}, "max_token_id": -1}
    if stats and "scored_tokens" in stats[0]:
        total["scored_tokens"] = sum(s["scored_tokens"] for s in stats)
    for s in stats:
        total["documents"] += s["documents"]
        total["tokens"] += s["tokens"]
        total["max_token_id"] = max(total["max_token_id"], s["max_token_id"])
        for key in ("dropped", "length_histogram"):
            for label, n in s[key].items():
                total[key][label] = total[key].get(label, 0) + n
    order = lambda h: dict(sorted(h.items(), key=lambda kv: int(kv[0][2:])))  # noqa: E731 (bins by size)
    for s in stats + [total]:
        s["length_histogram"] = order(s["length_histogram"])
    if total["documents"] == 0:
        raise DataError(f"prepare {output_prefix!r}: no documents left from {list(inputs)} "
                        f"(dropped: {total['dropped']}); a source needs at least one non-empty document")
    out = {"output": output_prefix, "dtype": dtype,
           "tokenizer": {"spec": tokenizer, "vocab_size": tok.vocab_size, "eod": tok.eod, "pad": tok.pad},
           "inputs": dict(zip(inputs, stats)), "total": total}
    return out
