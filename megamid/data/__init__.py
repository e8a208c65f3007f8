"""Token data: tokenizers, indexed datasets, mixtures, packing."""
