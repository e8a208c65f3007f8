"""python benchmarks/synthetic_hf_model.py --out DIR [--size 1b|tiny] [--dtype bf16|fp32]

Writes a random Llama HF directory (config.json + sharded safetensors + index); `--size 1b` has
Llama-3.2-1B's shapes (16 layers, hidden 2048, GQA 32/8, ffn 8192, vocab 128256, tied; 1.24B parameters,
2.4 GB in bf16). Used by benchmarks/convert_memory.py to measure the converters' peak memory. Tensors are
made and written one at a time (SafetensorsWriter), so this script itself stays near one tensor in
memory (~0.5 GB for the bf16 embedding).
"""

import argparse
import json
import os

import torch

from megamid.checkpoint.hf_llama import hf_config, hf_weight_shapes
from megamid.checkpoint.safetensors_files import SafetensorsWriter
from megamid.config import ModelConfig

SIZES = {
    "1b": dict(num_layers=16, hidden_size=2048, num_attention_heads=32, num_query_groups=8, ffn_hidden_size=8192,
               vocab_size=128256, max_position_embeddings=131072, tie_embeddings=True,
               rope={"type": "llama3", "theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "tiny": dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                 vocab_size=128, max_position_embeddings=128),
}


def write_model(out: str, size: str = "1b", dtype_name: str = "bf16") -> ModelConfig:
    """Write the random HF directory `out` (must not exist); returns its ModelConfig."""
    cfg = ModelConfig(**SIZES[size], dtype=dtype_name)
    dtype = cfg.torch_dtype
    os.makedirs(out, exist_ok=False)
    shapes = hf_weight_shapes(cfg)
    writer = SafetensorsWriter(out, [(n, dtype, s) for n, s in shapes.items()], max_file_bytes=1 << 30)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            t.normal_(0.0, 0.02, generator=gen)
        writer.write(name, t)
        del t
    files = writer.close()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=1)
    print(f"{out}: {cfg.num_parameters() / 1e9:.2f}B parameters, {len(files)} files")
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    write_model(args.out, args.size, args.dtype)


if __name__ == "__main__":
    main()
