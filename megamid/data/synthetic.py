"""Small indexed datasets written directly: `write_indexed` (token-id documents to megatron's
`.bin/.idx`), `write_synthetic_corpus` (learnable arithmetic/counting texts for tests), and the
long-range tasks of `megamid data synthetic` (`write_synthetic`): passkey-in-filler and multi-query
associative recall (Zoology's MQAR) at a chosen length distribution, tokenizer-aware (pieces are
tokenized once and joined as ids, so lengths are exact), with held-out sets at fixed lengths, and a
held-out long-text set of Python source files for perplexity by position. The real preparation
pipeline is `megamid data prepare`; the trainer reads through megamid.data.mixture_dataset.
"""

import os

import numpy as np

from megamid.config.base import ConfigError
from megamid.config.data import LOSS_MASK_SUFFIX


def write_indexed(prefix: str, documents, vocab_size: int, dtype=None) -> int:
    """Writes token-id documents to `prefix.bin/.idx` (megatron's format). Returns the token count.
    dtype: the stored type (default: uint16 below 65500 ids, else int32; uint8 for loss masks)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    if dtype is None:
        dtype = np.uint16 if vocab_size < 65500 else np.int32
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    tokens = 0
    import torch

    for doc in documents:
        builder.add_document(torch.as_tensor(np.asarray(doc, dtype=np.int64)), [len(doc)])
        tokens += len(doc)
    builder.finalize(prefix + ".idx")
    return tokens


def synthetic_documents(num_docs: int, seed: int):
    """Short arithmetic and counting texts: learnable structure, so a few steps visibly lower the loss."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    for _ in range(num_docs):
        kind = rng.integers(3)
        if kind == 0:
            a, b = rng.integers(0, 100, size=2)
            lines = [f"{a} + {b} = {a + b}." for a, b in rng.integers(0, 100, size=(rng.integers(4, 12), 2))]
            yield " ".join(lines)
        elif kind == 1:
            start = int(rng.integers(0, 50))
            yield "count: " + " ".join(str(start + i) for i in range(int(rng.integers(10, 60))))
        else:
            w = rng.choice(words, size=int(rng.integers(3, 6)))
            yield "repeat: " + " ".join(" ".join(w) for _ in range(int(rng.integers(3, 10))))


def write_synthetic_corpus(prefix: str, tokenizer, num_docs: int = 2000, seed: int = 0) -> int:
    docs = (tokenizer.encode(text) + [tokenizer.eod] for text in synthetic_documents(num_docs, seed))
    return write_indexed(prefix, docs, tokenizer.vocab_size)


def check_prefix(prefix: str, field: str) -> None:
    for ext in (".bin", ".idx"):
        if not os.path.isfile(prefix + ext):
            raise ConfigError(f"{field}={prefix!r} is invalid: {prefix + ext} does not exist "
                              f"(an indexed dataset is a PREFIX.bin + PREFIX.idx pair; make one with "
                              f"`megamid data prepare`)")


# ---- long-range tasks: `megamid data synthetic` ---------------------------------------------------
# The passkey text is the short form megamid.eval.retrieval uses in small windows (PASSKEY_SHORT), so a
# model trained on these documents is evaluated on the prompt it was trained on (a test keeps them equal).
PASSKEY_HEAD = "Remember the pass key.\n"
PASSKEY_NEEDLE = "The pass key is {key}. Remember it."
PASSKEY_QUESTION = "\nThe pass key is"
PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
MQAR_HEAD = "Recall:"
MQAR_QUERY = "\nQuery:"


class _Pieces:
    """Token ids of each piece of text, encoded once (pieces are concatenated as ids, so a document's
    length in tokens is exact for any tokenizer)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, text: str) -> list:
        if text not in self.ids:
            self.ids[text] = list(self.tokenizer.encode(text))
        return self.ids[text]


def passkey_document(pieces: _Pieces, rng: np.random.Generator, length: int, depth: float = None):
    """(ids, answer span): a 5-digit key planted at `depth` (random if None) in filler, asked at the end,
    at most `length` tokens; the span (lo, hi, depth): [lo, hi) holds the answer's tokens (" KEY.") and
    depth is the fraction of the filler before the key."""
    key = str(int(rng.integers(10000, 100000)))
    head, question = pieces(PASSKEY_HEAD), pieces(PASSKEY_QUESTION)
    needle, answer = pieces(" " + PASSKEY_NEEDLE.format(key=key)), pieces(f" {key}.")
    budget = length - len(head) - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise ConfigError(f"length={length} is too short for a passkey document: it needs {length - budget} tokens "
                          "with this tokenizer")
    filler, i = [], int(rng.integers(len(PASSKEY_FILLER)))
    while True:
        ids = pieces(" " + PASSKEY_FILLER[i % len(PASSKEY_FILLER)])
        if sum(map(len, filler)) + len(ids) > budget:
            break
        filler.append(ids)
        i += 1
    at = int(round((rng.random() if depth is None else depth) * len(filler)))
    out = list(head)
    for k, ids in enumerate(filler[:at]):
        out += ids
    out += needle
    for ids in filler[at:]:
        out += ids
    out += question
    return out + answer, (len(out), len(out) + len(answer), at / max(1, len(filler)))


MQAR_KEYS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
MQAR_VALUES = "0123456789"
MQAR_MAX_PAIRS = 24


def mqar_document(pieces: _Pieces, rng: np.random.Generator, length: int, pairs: int = None):
    """(ids, answer spans): multi-query associative recall (Zoology's MQAR) in text: 2 to 24 key-value pairs
    (as many as fit, at most) of one letter and one digit (" k7") spread over the window by runs of spaces, then queries of a random
    half of the keys in a new order (" k7"), exactly `length` tokens. Keys and values are single
    characters so that a byte model sees Zoology's one-token keys and values; a key is the only letter
    followed by a digit. Each span (lo, hi, depth): [lo, hi) holds a queried value's tokens, predicted
    from its key; depth is where the queried pair sits in the window (0 start, 1 end of the pairs)."""
    head, query, space = pieces(MQAR_HEAD), pieces(MQAR_QUERY), pieces(" ")[-1:]
    pair_len = max(len(pieces(f" {k}{v}")) for k in "aZ" for v in "07")
    if pairs is None:  # uniform from 2 to the most (up to MQAR_MAX_PAIRS) whose queries also fit: the easy
        most = min(MQAR_MAX_PAIRS, (length - len(head) - len(query)) // (2 * pair_len))  # ones teach recall
        pairs = int(rng.integers(min(2, most), most + 1)) if most >= 1 else 0
    if pairs < 1:
        raise ConfigError(f"length={length} is too short for an MQAR document")
    keys = [MQAR_KEYS[int(i)] for i in rng.choice(len(MQAR_KEYS), size=pairs, replace=False)]
    values = [MQAR_VALUES[int(i)] for i in rng.integers(0, len(MQAR_VALUES), size=pairs)]
    asked = [int(i) for i in rng.permutation(pairs)]
    queries = [(pieces(f" {keys[i]}"), pieces(f"{values[i]}")) for i in asked]
    pair_ids = [pieces(f" {k}{v}") for k, v in zip(keys, values)]
    gap = length - len(head) - len(query) - sum(map(len, pair_ids)) - sum(len(a) + len(b) for a, b in queries)
    if gap < 0:
        raise ConfigError(f"length={length} is too short for an MQAR document of {pairs} pairs")
    cuts = np.sort(rng.integers(0, gap + 1, size=pairs))  # spaces before each pair: the pairs spread out
    out, starts, used = list(head), [], 0
    for cut, ids in zip(cuts, pair_ids):
        out += space * int(cut - used)
        used = int(cut)
        starts.append(len(out))
        out += ids
    out += space * (gap - used) + query
    spans = []
    for i, (key_ids, value_ids) in zip(asked, queries):
        out += key_ids
        spans.append((len(out), len(out) + len(value_ids), (starts[i] - len(head)) / max(1, starts[-1] - len(head))))
        out += value_ids
    return out, spans


COPY_HEAD, COPY_AGAIN = "Copy:", "\nAgain:"
COPY_CHARS = MQAR_KEYS + MQAR_VALUES


def copy_document(pieces: _Pieces, rng: np.random.Generator, length: int):
    """(ids, span): a random string of letters and digits (random length), then the same string again,
    padded with spaces to exactly `length` tokens; every token of the repeat can be copied from the first half (an induction-head task that a
    small model learns in a few hundred steps, and the mechanism recall builds on)."""
    head, again = pieces(COPY_HEAD), pieces(COPY_AGAIN)
    most = (length - len(head) - len(again)) // 2
    if most < 1:
        raise ConfigError(f"length={length} is too short for a copy document")
    # a random length: the repeat starts at a different offset in every document, so copying must find
    # its place by content (an induction head), not by a fixed distance
    n = int(rng.integers(min(8, most), most + 1))
    chars = [pieces(COPY_CHARS[int(i)]) for i in rng.integers(0, len(COPY_CHARS), size=n)]
    body = [t for ids in chars for t in ids][:n]
    out = head + body + again
    lo = len(out)
    out += body
    out += pieces(" ")[-1:] * (length - len(out))
    return out, (lo, lo + len(body), 0.0)


TASKS = {"passkey": passkey_document, "mqar": mqar_document, "copy": copy_document}


def _pad(pieces: _Pieces, ids: list, spans: list, length: int, at: int):
    """ids padded to exactly `length` with single-token spaces inserted at index `at` (spans after it move)."""
    space = pieces(" ")[-1:]
    n = length - len(ids)
    if n <= 0:
        return ids, spans
    return ids[:at] + space * n + ids[at:], [(lo + n, hi + n, d) if lo >= at else (lo, hi, d) for lo, hi, d in spans]


def task_documents(task: str, tokenizer, count: int, min_length: int, max_length: int, seed: int,
                   exact: bool = False, placed: bool = False):
    """`count` (ids, spans) documents of `task` with lengths uniform in [min_length, max_length] tokens.
    exact: every passkey document padded with spaces to exactly its drawn length (before the question; MQAR
    documents are always exact), so that documents of length L + EOD fill training windows of L + 1 tokens exactly.
    placed: every document exactly max_length tokens, holding a task of min_length..max_length tokens at a
    random offset (spaces before and after it): whole in an aligned window, its answer at any position."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is invalid: expected one of {', '.join(TASKS)}")
    if not 0 < min_length <= max_length:
        raise ConfigError(f"lengths {min_length}..{max_length} are invalid: 0 < min <= max")
    pieces, rng = _Pieces(tokenizer), np.random.default_rng(seed)
    for _ in range(count):
        length = int(rng.integers(min_length, max_length + 1))
        ids, spans = TASKS[task](pieces, rng, length)
        spans = spans if isinstance(spans, list) else [spans]
        if exact or placed:
            if task == "passkey":  # (MQAR documents are exact already)
                ids, spans = _pad(pieces, ids, spans, length, spans[0][0] - len(pieces(PASSKEY_QUESTION)))
        if placed:
            front = int(rng.integers(0, max_length - len(ids) + 1))
            ids, spans = _pad(pieces, ids, spans, front + len(ids), 0)   # spaces before the task ...
            ids = ids + pieces(" ")[-1:] * (max_length - len(ids))         # ... and after it
        yield ids, spans


def heldout_documents(task: str, tokenizer, length: int, count: int, seed: int = 0):
    """The (ids, spans) of OUT/<task>_heldout_<length> as write_synthetic writes it (same seeds): an
    evaluator reads the answer spans from here, the token ids from either."""
    index = list(TASKS).index(task)
    return list(task_documents(task, tokenizer, count, length, length, _heldout_seed(seed, index, length), exact=True))


def answer_mask(length: int, spans) -> np.ndarray:
    """uint8 [length]: 1 on the answer tokens of (lo, hi, depth) spans, 0 elsewhere (the loss mask a source
    with `loss_mask: true` reads: only the answers are scored)."""
    mask = np.zeros(length, dtype=np.uint8)
    for lo, hi, _ in spans:
        mask[lo:hi] = 1
    return mask


def _heldout_seed(seed: int, task_index: int, length: int) -> int:
    return 10**6 + seed * 1000 + task_index * 97 + length


def _plain_source(text: str) -> bool:
    """Hand-written code: (almost) all ASCII and not a generated file (transformers' modular copies open
    with a banner of emoji; data tables and vendored blobs are not code a model learns from context)."""
    head = text[:2000].lower()
    if "generated" in head or "do not edit" in head:
        return False
    return sum(ch.isascii() for ch in text) >= 0.995 * len(text)


def python_source_text(min_chars: int, max_files: int = 100_000, seed: int = 0) -> list:
    """Long Python source files of the installed packages (sorted, then seeded-shuffled), each at least
    `min_chars` long: real long-range structure (identifiers defined once and used throughout a file)."""
    import sysconfig

    roots = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    files = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    try:
                        if os.path.getsize(path) >= min_chars:
                            files.append(path)
                    except OSError:
                        continue
            if len(files) >= max_files:
                break
    np.random.default_rng(seed).shuffle(files)
    return files


def write_synthetic(out_dir: str, tokenizer, tokenizer_spec: str, tasks=("passkey", "mqar"), train_docs: int = 4000,
                    heldout_docs: int = 64, min_length: int = 96, max_length: int = 128,
                    heldout_lengths=(128, 256, 512), code_docs: int = 32, code_length: int = 512, seed: int = 0,
                    code_train_docs: int = 0, placed: bool = False) -> dict:
    """Writes OUT/<task>_train (lengths uniform in [min_length, max_length]; placed: each task of that length
    at a random offset in a document of exactly max_length tokens with its EOD) with its loss mask
    OUT/<task>_train.lossmask (1 on the answers: a source with `loss_mask: true`), OUT/<task>_heldout_<N> (at most
    N tokens each, other seeds) as .bin/.idx, and OUT/code_heldout (`code_docs` Python source files
    of >= code_length tokens) for perplexity by position, and with code_train_docs OUT/code_train (other
    Python files, any length); returns the manifest (also OUT/synthetic.json)."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    eod = tokenizer.eod
    manifest = {"tokenizer": tokenizer_spec, "seed": seed, "sets": {}}

    def put(name, docs, masks=None, **info):
        prefix = os.path.join(out_dir, name)
        docs = list(docs)
        tokens = write_indexed(prefix, docs, tokenizer.vocab_size)
        manifest["sets"][name] = {"prefix": prefix, "documents": len(docs), "tokens": tokens, **info}
        if masks is not None:
            masks = list(masks)
            write_indexed(prefix + LOSS_MASK_SUFFIX, masks, 2, dtype=np.uint8)
            manifest["sets"][name]["loss_mask"] = {"prefix": prefix + LOSS_MASK_SUFFIX,
                                                   "scored_tokens": int(sum(int(m.sum()) for m in masks))}

    for task in tasks:
        t = list(TASKS).index(task)
        # min == max (or placed): documents of exactly max_length tokens with their EOD, aligned to training
        # windows of max_length; placed: the task (min..max) at a random offset in it
        exact = min_length == max_length or placed
        docs = list(task_documents(task, tokenizer, train_docs, min_length - exact, max_length - exact,
                                   seed * 1000 + t, exact and not placed, placed))
        put(f"{task}_train", (ids + [eod] for ids, _ in docs), (answer_mask(len(ids) + 1, spans) for ids, spans in docs),
            task=task, lengths=[min_length, max_length])
        for n in heldout_lengths:
            put(f"{task}_heldout_{n}", (ids for ids, _ in
                                        task_documents(task, tokenizer, heldout_docs, n, n, _heldout_seed(seed, t, n),
                                                                       exact=True)),
                task=task, lengths=[n, n], held_out=True)
    if code_docs or code_train_docs:
        heldout, train = [], []
        for path in python_source_text(code_length):  # bytes >= tokens for every tokenizer megamid has
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if not _plain_source(text):
                continue
            ids = tokenizer.encode(text)
            if len(heldout) < code_docs and len(ids) >= code_length:
                heldout.append(ids)
            elif len(train) < code_train_docs:
                train.append(ids + [eod])
            if len(heldout) == code_docs and len(train) == code_train_docs:
                break
        if code_docs:
            put("code_heldout", heldout, source="Python files of the installed packages", held_out=True,
                min_length=code_length)
        if code_train_docs:
            put("code_train", train, source="other Python files of the installed packages")
    with open(os.path.join(out_dir, "synthetic.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
