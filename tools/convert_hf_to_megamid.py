"""python tools/convert_hf_to_megamid.py --hf-dir DIR --out CKPT [--tp N] [--pp N] [--dtype bf16] [--overwrite]

A local transformers Llama / Mistral / Qwen2 / Qwen3 directory (config.json, model.safetensors or shards
with model.safetensors.index.json, tokenizer files) -> a megamid checkpoint directory: a recipe's `base:`.
It holds megamid.json (config.model for your recipe), recipe_base.yaml (a recipe start: base, tokenizer,
model) and hf_tokenizer/ (the copied tokenizer files). Weights stream tensor by tensor from the
safetensors files (peak memory: about the largest tensor, not the model); --tp N writes the shards each of N tensor-parallel ranks would (one process); any
TP/PP loads any written layout (dist_checkpointing reshards). --pp is checked against the layer count and
recorded: layers are separate chunks in every pipeline layout, so the files do not depend on it.
Exit status 1 with a message naming the file, tensor or field on any error.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="transformers model directory (safetensors weights)")
    parser.add_argument("--out", required=True, help="megamid checkpoint directory to write")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel layout of the written shards (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline layout to check and record (default 1)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weight dtype (default: config.json's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    if args.tp < 1 or args.pp < 1:
        parser.error(f"--tp {args.tp} --pp {args.pp}: both must be >= 1")

    from megamid.checkpoint.hf_conversion import import_hf
    from megamid.checkpoint.safetensors_files import CheckpointFileError
    from megamid.config import ConfigError

    try:
        import_hf(args.hf_dir, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, overwrite=args.overwrite)
    except (CheckpointFileError, ConfigError) as exc:
        print(f"convert_hf_to_megamid: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
