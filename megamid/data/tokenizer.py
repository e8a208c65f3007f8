"""Tokenizers with the small interface megatron-core's GPTDataset and megamid's eval need:
`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eod`, `pad`, `unique_identifiers`."""

from collections import OrderedDict

from megamid.data import DataError


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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


class SentencePieceTokenizer:
    """A local sentencepiece `.model`. EOD is the model's `</s>`; pad its pad piece, else EOD."""

    def __init__(self, model_path: str):
        import sentencepiece  # local: only the data commands need it

        self.path = str(model_path)
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as exc:
            raise DataError(f"tokenizer {self.path!r} cannot be loaded: expected a sentencepiece .model (a serialized "
                            f"ModelProto, as `megamid data train-tokenizer` writes); sentencepiece says: "
                            f"{_first_line(exc)}") from None
        self.vocab_size = self.sp.get_piece_size()
        if self.sp.eos_id() < 0:
            raise DataError(f"tokenizer {self.path}: the sentencepiece model has no </s> piece to use as EOD; "
                             "train it with eos_id >= 0 (megamid data train-tokenizer does)")
        self.eod = self.sp.eos_id()
        self.pad = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.eod
        self.unique_identifiers = OrderedDict(class_name=type(self).__name__, model=self.path)

    def encode(self, text: str) -> list:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


EOD_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>", "<|eot_id|>")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (tokenizers library; no network, no transformers needed).

    EOD is the first of EOD_CANDIDATES in the vocab; pad the first of PAD_CANDIDATES, else EOD."""

    def __init__(self, path: str):
        import os

        from tokenizers import Tokenizer  # local: only the data commands need it

        self.path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else str(path)
        if not os.path.isfile(self.path):
            raise DataError(f"tokenizer {path!r} is a folder without tokenizer.json; valid: 'byte', a sentencepiece "
                            ".model, or a Hugging Face tokenizer.json (or its folder)")
        try:
            self.tok = Tokenizer.from_file(self.path)
        except Exception as exc:  # the tokenizers library raises a bare Exception for any unparsable file
            raise DataError(f"tokenizer {self.path!r} cannot be loaded: expected a Hugging Face tokenizer.json "
                            f"(JSON with a 'model' section); tokenizers says: {_first_line(exc)}") from None
        vocab = self.tok.get_vocab(with_added_tokens=True)
        if not vocab:
            raise DataError(f"tokenizer {self.path!r} has an empty vocab; expected a trained tokenizer.json")
        self.vocab_size = max(self.tok.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)
        eod = [vocab[t] for t in EOD_CANDIDATES if t in vocab]
        if not eod:
            raise DataError(f"tokenizer {self.path}: no end-of-document token; expected one of "
                             f"{', '.join(EOD_CANDIDATES)} in its vocab")
        self.eod = eod[0]
        pad = [vocab[t] for t in PAD_CANDIDATES if t in vocab]
        self.pad = pad[0] if pad else self.eod
        self.unique_identifiers = OrderedDict(class_name=type(self).__name__, path=self.path)

    def encode(self, text: str) -> list:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

