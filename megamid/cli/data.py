"""megamid data {prepare,train-tokenizer,demo-corpus} ...   (`megamid data -h` lists options)

  megamid data prepare --input FILES... --tokenizer byte|SP.model|tokenizer.json --output PREFIX
  megamid data train-tokenizer --input FILES... --output DIR/NAME --vocab-size 8000
  megamid data demo-corpus OUT [--size tiny|small] [--seed 0] [--tokenizer byte]
"""

import json
import os


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("prepare", help="text / JSONL / .jsonl.gz -> Megatron indexed .bin/.idx + stats JSON")
    p.add_argument("--input", nargs="+", required=True, help="input files (.txt etc. = one document each)")
    p.add_argument("--tokenizer", required=True, help="'byte', a sentencepiece .model, or a tokenizer.json")
    p.add_argument("--output", required=True, help="output prefix: writes PREFIX.bin, .idx, .stats.json")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--text-key", default="text", help="JSONL field holding the text")
    p.add_argument("--quality-key", default=None, help="JSONL score field for the quality filter")
    p.add_argument("--min-quality", type=float, default=None, help="keep documents with score >= this")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")

    t = sub.add_parser("train-tokenizer", help="train a sentencepiece tokenizer on local text")
    t.add_argument("--input", nargs="+", required=True, help="text or JSONL files")
    t.add_argument("--output", required=True, help="model prefix: writes PREFIX.model and PREFIX.vocab")
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    t.add_argument("--text-key", default="text")
    t.add_argument("--max-sentences", type=int, default=200_000, help="lines sampled for training")

    d = sub.add_parser("demo-corpus", help="a multi-domain corpus from local text (no download)")
    d.add_argument("out", help="output folder")
    d.add_argument("--size", default="tiny", choices=["test", "tiny", "small"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--tokenizer", default="byte", help="tokenizer for the .bin/.idx; 'none' writes JSONL only")
    d.add_argument("--workers", type=int, default=1)


def run(args) -> int:
    from megamid.cli import CommandError

    if args.action == "prepare":
        from megamid.data.prepare import prepare

        if (args.quality_key is None) != (args.min_quality is None):
            raise CommandError("--quality-key and --min-quality go together")
        stats = prepare(args.input, args.tokenizer, args.output, workers=args.workers, text_key=args.text_key,
                        quality_key=args.quality_key, min_quality=args.min_quality, dedup=not args.no_dedup)
        total = stats["total"]
        print(f"{args.output}: {total['documents']} documents, {total['tokens']} tokens, "
              f"dropped {total['dropped'] or 'none'}; stats in {args.output}.stats.json")
    elif args.action == "train-tokenizer":
        from megamid.data.tokenizer_files import train_tokenizer

        path = train_tokenizer(args.input, args.output, args.vocab_size, args.model_type, args.text_key,
                               args.max_sentences)
        print(f"wrote {path} (vocab {args.vocab_size})")
    else:
        from megamid.data.demo_corpus import write_corpus

        tokenizer = None if args.tokenizer == "none" else args.tokenizer
        manifest = write_corpus(args.out, args.size, args.seed, tokenizer, args.workers)
        for name, entry in manifest["domains"].items():
            print(f"{name:9s} {entry['documents']:6d} docs {entry['chars']:10d} chars"
                  + (f" {entry['tokens']:10d} tokens -> {entry['prefix']}" if "tokens" in entry else ""))
        print(json.dumps({"manifest": os.path.join(args.out, "corpus.json")}))
    return 0
