"""Tokenizers with the small interface megatron-core's GPTDataset and megamid's eval need:
`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eod`, `pad`, `unique_identifiers`."""

from collections import OrderedDict


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then special tokens. Needs no files: the demo's base tokenizer."""

    def __init__(self):
        self.pad = 256
        self.eod = 257
        self.vocab_size = 258
        self.unique_identifiers = OrderedDict(class_name=type(self).__name__)

    def encode(self, text: str) -> list:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")
