"""megamid data {prepare,train-tokenizer,demo-corpus,synthetic} ...   (`megamid data -h` lists options)

  megamid data prepare --input FILES... --tokenizer byte|SP.model|tokenizer.json --output PREFIX
  megamid data train-tokenizer --input FILES... --output DIR/NAME --vocab-size 8000
  megamid data demo-corpus OUT [--size tiny|small] [--seed 0] [--tokenizer byte]
  megamid data synthetic OUT [--tasks passkey,mqar,copy] [--placed] [--tokenizer byte] [--min-length 96 --max-length 128]
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
    p.add_argument("--prompt-key", default=None, help="JSONL field of a prompt put before --text-key's answer; "
                   "writes OUTPUT.lossmask.bin/.idx scoring the answers only (a source's loss_mask: true)")

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

    y = sub.add_parser("synthetic", help="passkey / MQAR training and held-out sets + a held-out code ppl set")
    y.add_argument("out", help="output folder: <task>_train, <task>_heldout_<N>, code_heldout (.bin/.idx)")
    y.add_argument("--tasks", default="passkey,mqar", help="comma-separated, from passkey,mqar,copy")
    y.add_argument("--tokenizer", default="byte", help="'byte', a sentencepiece .model, or a tokenizer.json")
    y.add_argument("--train-docs", type=int, default=4000, help="training documents per task")
    y.add_argument("--min-length", type=int, default=96, help="shortest training document (tokens)")
    y.add_argument("--max-length", type=int, default=128, help="longest training document (tokens)")
    y.add_argument("--placed", action="store_true", help="every training document exactly --max-length tokens "
                   "(with EOD), the task (--min-length..--max-length) at a random offset in it: whole in aligned "
                   "training windows of --max-length, its answer at any position")
    y.add_argument("--heldout-lengths", default="128,256,512", help="lengths of the held-out sets (tokens)")
    y.add_argument("--heldout-docs", type=int, default=64, help="held-out documents per task and length")
    y.add_argument("--code-docs", type=int, default=32, help="held-out Python source files (0: none)")
    y.add_argument("--code-length", type=int, default=512, help="shortest code document (tokens)")
    y.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from megamid.cli import CommandError

    if args.action == "prepare":
        from megamid.data.prepare import prepare

        if (args.quality_key is None) != (args.min_quality is None):
            raise CommandError("--quality-key and --min-quality go together")
        stats = prepare(args.input, args.tokenizer, args.output, workers=args.workers, text_key=args.text_key,
                        quality_key=args.quality_key, min_quality=args.min_quality, dedup=not args.no_dedup,
                        prompt_key=args.prompt_key)
        total = stats["total"]
        scored = f", {total['scored_tokens']} scored (mask {args.output}.lossmask)" if "scored_tokens" in total else ""
        print(f"{args.output}: {total['documents']} documents, {total['tokens']} tokens{scored}, "
              f"dropped {total['dropped'] or 'none'}; stats in {args.output}.stats.json")
    elif args.action == "train-tokenizer":
        from megamid.data.tokenizer_files import train_tokenizer

        path = train_tokenizer(args.input, args.output, args.vocab_size, args.model_type, args.text_key,
                               args.max_sentences)
        print(f"wrote {path} (vocab {args.vocab_size})")
    elif args.action == "synthetic":
        from megamid.data.synthetic import TASKS, write_synthetic
        from megamid.data.tokenizer_files import load_tokenizer

        tasks = [t for t in args.tasks.split(",") if t]
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise CommandError(f"--tasks={args.tasks!r} is invalid: valid tasks are {', '.join(TASKS)}")
        try:
            lengths = [int(n) for n in args.heldout_lengths.split(",") if n]
        except ValueError:
            raise CommandError(f"--heldout-lengths={args.heldout_lengths!r} is invalid: comma-separated integers") from None
        for name in ("train_docs", "min_length", "max_length", "heldout_docs"):
            if getattr(args, name) < 1:
                raise CommandError(f"--{name.replace('_', '-')}={getattr(args, name)} is invalid: a positive integer")
        manifest = write_synthetic(args.out, load_tokenizer(args.tokenizer), args.tokenizer, tasks, args.train_docs,
                                   args.heldout_docs, args.min_length, args.max_length, lengths, args.code_docs,
                                   args.code_length, args.seed, placed=args.placed)
        for name, entry in manifest["sets"].items():
            print(f"{name:20s} {entry['documents']:6d} docs {entry['tokens']:10d} tokens -> {entry['prefix']}")
    else:
        from megamid.data.demo_corpus import write_corpus

        tokenizer = None if args.tokenizer == "none" else args.tokenizer
        manifest = write_corpus(args.out, args.size, args.seed, tokenizer, args.workers)
        for name, entry in manifest["domains"].items():
            print(f"{name:9s} {entry['documents']:6d} docs {entry['chars']:10d} chars"
                  + (f" {entry['tokens']:10d} tokens -> {entry['prefix']}" if "tokens" in entry else ""))
        print(json.dumps({"manifest": os.path.join(args.out, "corpus.json")}))
    return 0
