"""The training loop's data seam over megatron-core's indexed datasets and GPTDataset.

`GPTSamples(prefixes, weights, seq_len, num_samples, tokenizer, seed)[i]` is sample i of a run: a
dict of `tokens`, `labels`, `loss_mask`, `position_ids` (numpy). It is a pure function of the
arguments and i, so resuming at step k reads samples k * global_batch onwards, nothing more to save.
`write_indexed` / `write_synthetic_corpus` make `.bin/.idx` files (the real preparation pipeline is
`megamid data prepare`).
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


class GPTSamples:
    """Random access to the samples of a weighted blend of indexed datasets (megatron-core GPTDataset)."""

    def __init__(self, prefixes, weights, seq_len: int, num_samples: int, tokenizer, seed: int):
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        for i, prefix in enumerate(prefixes):
            check_prefix(prefix, f"data.sources.{i}.prefix")
        blend = (list(prefixes), [float(w) for w in weights] if len(prefixes) > 1 else None)
        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_len,
            blend=blend,
            split="1,0,0",
            tokenizer=tokenizer,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            mmap_bin_files=True,
        )
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True,
                                                    config).build()
        self.dataset = train
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        return {k: np.asarray(item[k]) for k in ("tokens", "labels", "loss_mask", "position_ids")}
