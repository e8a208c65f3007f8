"""Tokenizers from files: load one by spec, train a sentencepiece model on local text.

`megamid data train-tokenizer --input FILES... --output DIR/NAME --vocab-size 8000` runs
train_tokenizer; `megamid data prepare --tokenizer SPEC` runs load_tokenizer.
"""

import os
import random

from megamid.data import DataError
from megamid.data.documents import iter_documents
from megamid.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer


def load_tokenizer(spec: str):
    """`byte`, a sentencepiece `.model`, or a HF `tokenizer.json` (or a folder holding one)."""
    if spec == "byte":
        return ByteTokenizer()
    if not os.path.exists(spec):
        raise DataError(f"tokenizer {spec!r} not found; valid: 'byte', a sentencepiece .model file, "
                                "or a tokenizer.json (or its folder)")
    if spec.endswith(".json") or os.path.isdir(spec):
        return HFTokenizer(spec)
    return SentencePieceTokenizer(spec)


def _lines(inputs, text_key: str):
    for path in sorted(inputs):
        for text, _ in iter_documents(path, text_key):
            for line in text.splitlines():
                if line.strip():
                    yield line


def train_tokenizer(inputs, output_prefix: str, vocab_size: int = 8000, model_type: str = "bpe",
                    text_key: str = "text", max_sentences: int = 200_000, seed: int = 0) -> str:
    """Train a sentencepiece model (ids: pad 0, unk 1, bos 2, eos 3 = EOD); returns PREFIX.model.

    Lines are reservoir-sampled with a seeded RNG so a large input stays cheap and the result is
    deterministic; byte fallback keeps every input encodable."""
    import sentencepiece

    rng, sample = random.Random(seed), []
    for n, line in enumerate(_lines(inputs, text_key)):
        if len(sample) < max_sentences:
            sample.append(line)
        elif (j := rng.randrange(n + 1)) < max_sentences:
            sample[j] = line
    if not sample:
        raise DataError(f"train-tokenizer: no text in {list(inputs)}; valid inputs: text or JSONL files")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_prefix=output_prefix, vocab_size=vocab_size,
        model_type=model_type, pad_id=0, unk_id=1, bos_id=2, eos_id=3, byte_fallback=True,
        character_coverage=0.9995, num_threads=min(2, os.cpu_count() or 1), minloglevel=2,
        hard_vocab_limit=False)
    return output_prefix + ".model"
