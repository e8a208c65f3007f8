"""python tools/convert_megamid_to_hf.py --ckpt CKPT --out DIR [--max-file-gb 5] [--overwrite]

Any megamid checkpoint (a converted base, a training or branch step, a soup) saved at any TP/PP (a
checkpoint directory with megamid.json, or a run's checkpoint dir whose `latest` names one) -> a
transformers directory: safetensors weights (streamed one layer at a time, loaded resharded to TP=1),
config.json (LlamaForCausalLM; MistralForCausalLM for a sliding window; Qwen2ForCausalLM for q/k/v-only
biases, Qwen3ForCausalLM for q/k layernorms) from the checkpoint's record (megamid.checkpoint.record): the
rope it trained with (rope_parameters and the legacy rope_scaling), max_position_embeddings at the
extended window, bos/eos/pad ids, also in generation_config.json; and its tokenizer: a tokenizer.json is
copied (with the tokenizer_config.json and special_tokens_map.json beside it); a sentencepiece .model is
copied as tokenizer.model; megamid's `byte` tokenizer has no HF file, so none is written (ids 0-255 are
bytes, 256 pad, 257 eod).
Exit status 1 with a message naming the file, tensor or field on any error.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="megamid checkpoint (or run checkpoint dir with `latest`)")
    parser.add_argument("--out", required=True, help="transformers directory to write")
    parser.add_argument("--max-file-gb", type=float, default=5.0, help="largest safetensors file (default 5 GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)

    from megamid.checkpoint.hf_conversion import export_hf
    from megamid.checkpoint.safetensors_files import CheckpointFileError
    from megamid.config import ConfigError

    try:
        export_hf(args.ckpt, args.out, overwrite=args.overwrite, max_file_bytes=int(args.max_file_gb * 2**30))
    except (CheckpointFileError, ConfigError) as exc:
        print(f"convert_megamid_to_hf: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
