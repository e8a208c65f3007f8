"""Small indexed datasets written directly: `write_indexed` (token-id documents to megatron's
`.bin/.idx`) and `write_synthetic_corpus` (learnable arithmetic/counting texts for tests). The real
preparation pipeline is `megamid data prepare`; the trainer reads through megamid.data.mixture_dataset.
"""

import os

import numpy as np

from megamid.config.base import ConfigError


def write_indexed(prefix: str, documents, vocab_size: int) -> int:
    """Writes token-id documents to `prefix.bin/.idx` (megatron's format). Returns the token count."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

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
