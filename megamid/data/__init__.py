"""Token data: tokenizers, indexed datasets, mixtures, packing.

Modules: tokenizer (byte / sentencepiece / HF tokenizer.json classes), tokenizer_files (load by
spec, train sentencepiece), prepare (text -> .bin/.idx),
demo_corpus (a local multi-domain corpus), mixture_plan (shares per phase, pure), mixture_index
(the blended index, C++ with a Python twin), token_stream (one source as a seeded stream),
mixture_dataset (the dataset the trainer reads). Nothing is imported here: megatron loads lazily.
"""

from megamid.config.base import ConfigError


class DataError(ConfigError):
    """Bad data behind a config (missing or broken files, empty source, ids beyond the vocab).

    A ConfigError (so a ValueError): the CLI prints it as one line. Messages name the source."""
