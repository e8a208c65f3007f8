"""megamid eval CKPT --tasks passkey,needle,ruler,ppl,short --lengths 1024,4096 [--baseline CKPT] [--out DIR]

Long-context evaluation of a checkpoint: writes results.json, results.md and heatmap PNGs to --out.
Any megamid checkpoint works (a converted HF base, a training or branch step, a soup): it is loaded by
`megamid.load(path, tp, pp) -> (model, tokenizer)`, where model follows megamid.eval.protocol.LanguageModel.
"""

import json
import os

from megamid.cli import CommandError


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    parse.__name__ = f"comma-separated {kind.__name__}s"  # argparse names the type in its error
    return parse


def add_arguments(parser) -> None:
    from megamid.eval.ruler import TASKS as RULER_TASKS  # light: no torch model code
    from megamid.eval.runner import DEFAULT_DEPTHS, TASK_NAMES

    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint directory to evaluate")
    parser.add_argument("--tasks", type=_csv(str), default=["passkey", "needle", "ruler"],
                        help=f"comma-separated, from {','.join(TASK_NAMES)} (default: passkey,needle,ruler)")
    parser.add_argument("--lengths", type=_csv(int), default=[1024, 4096], help="context lengths in tokens (default: 1024,4096)")
    parser.add_argument("--depths", type=_csv(float), default=list(DEFAULT_DEPTHS),
                        help="needle depths in [0, 1] for passkey/needle (default: 0,0.25,0.5,0.75,1)")
    parser.add_argument("--samples", type=int, default=5, help="samples per (length, depth) cell / per RULER task and length")
    parser.add_argument("--num-candidates", type=int, default=4, help="candidates ranked per sample; chance = 1/N (default: 4)")
    parser.add_argument("--ruler-tasks", type=_csv(str), default=list(RULER_TASKS), help=f"from {','.join(RULER_TASKS)}")
    parser.add_argument("--greedy", action="store_true", help="also score greedy decoding (exact match); one forward per token")
    parser.add_argument("--documents", help="held-out token ids for ppl/short: .npy, .npz or an indexed dataset prefix")
    parser.add_argument("--short-documents", help="documents for the short-context check (default: --documents)")
    parser.add_argument("--short-length", type=int, default=512, help="tokens per short document (default: 512)")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="use at most this many documents (per length: from an indexed prefix, the last ones long enough)")
    parser.add_argument("--baseline", metavar="CKPT", help="checkpoint to compare short-document perplexity against")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size to run at (torchrun; default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to run at (torchrun; default 1)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="sequences per forward: bounds peak memory (candidates of one prompt are scored "
                             "in chunks of this many rows; default 4)")
    parser.add_argument("--rope", metavar="TYPE[:key=value,...]",
                        help="evaluate under this rope instead of the checkpoint's (zero-shot), e.g. "
                             "yarn:factor=4,original_max_position_embeddings=256; theta defaults to the checkpoint's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output directory (default: CKPT/eval)")


def _load(ckpt: str, args):
    import megamid

    return megamid.load(ckpt, tp=args.tp, pp=args.pp, max_batch=args.max_batch)


def _check_counts(args) -> None:
    """Numbers that would make an empty or meaningless evaluation (`--samples 0` printed null and exited 0)."""
    for flag, value, minimum in (("--samples", args.samples, 1), ("--num-candidates", args.num_candidates, 2),
                                 ("--short-length", args.short_length, 2), ("--max-documents", args.max_documents, 1)):
        if value is not None and value < minimum:
            raise CommandError(f"{flag} {value} is invalid: expected an integer >= {minimum}")
    if not args.tasks:
        raise CommandError("--tasks is empty: expected at least one task")
    if not args.lengths or any(n < 1 for n in args.lengths):
        raise CommandError(f"--lengths {','.join(map(str, args.lengths))} is invalid: expected token counts >= 1")
    bad = [d for d in args.depths if not 0.0 <= d <= 1.0]  # NaN fails both comparisons
    if not args.depths or bad:
        raise CommandError(f"--depths {','.join(map(str, bad or args.depths))} is invalid: expected depths in [0, 1]")


def _checked_rope(ckpt: str, spec: dict) -> dict:
    """`spec` with the checkpoint's theta (etc.) unless given, checked against its model before loading it."""
    from megamid.checkpoint.checkpointer import resolve
    from megamid.checkpoint.record import load_record
    from megamid.config import ModelConfig, build
    from megamid.config.eval import eval_rope
    from megamid.rope import model_rope_scaling

    record = load_record(resolve(ckpt, "checkpoint"))
    rope = eval_rope(record["rope"], spec)
    model_rope_scaling(build(ModelConfig, record["model"], "model"), rope, "--rope")
    return rope


def _switch_rope(model, rope: dict) -> None:
    from megamid.model.builder import set_rope

    for chunk in model.chunks:
        set_rope(chunk, rope)


def run(args) -> int:
    from megamid.eval.in_loop import read_documents
    from megamid.eval.runner import TASK_NAMES, evaluate

    _check_counts(args)
    unknown = [t for t in args.tasks if t not in TASK_NAMES]
    if unknown:
        raise CommandError(f"--tasks: unknown {','.join(unknown)}; valid: {','.join(TASK_NAMES)}")
    if ("ppl" in args.tasks or "short" in args.tasks) and not (args.documents or args.short_documents):
        raise CommandError("--tasks ppl/short need --documents (held-out token ids: .npy, .npz or an indexed dataset prefix)")
    if "short" in args.tasks and not args.baseline:
        print("megamid eval: no --baseline: 'short' reports perplexity without a ratio")
    from megamid.config.eval import parse_rope_spec

    rope = _checked_rope(args.ckpt, parse_rope_spec(args.rope)) if args.rope else None
    documents = read_documents(args.documents, args.lengths, args.max_documents)
    short_documents = read_documents(args.short_documents, [2], args.max_documents)
    from megamid.platform import is_rank0, shutdown

    try:
        model, tokenizer = _load(args.ckpt, args)
        if rope is not None:
            _switch_rope(model, rope)
        baseline = _load(args.baseline, args)[0] if args.baseline else None
        # under torchrun every rank evaluates (data-parallel replicas of one model); rank 0 writes
        out_dir = (args.out or os.path.join(args.ckpt, "eval")) if is_rank0() else None
        results = evaluate(model, tokenizer, args.tasks, args.lengths, out_dir, depths=args.depths, samples=args.samples,
                           num_candidates=args.num_candidates, seed=args.seed, ruler_tasks=args.ruler_tasks,
                           greedy=args.greedy, documents=documents, short_documents=short_documents,
                           short_length=args.short_length, baseline=baseline, max_documents=args.max_documents,
                           rope=rope)
    except ValueError as exc:  # a length too short for a task, an unknown RULER task: user input
        raise CommandError(str(exc)) from None
    finally:
        shutdown()
    summary = {task: results[task].get("accuracy", results[task].get("ratio")) for task in args.tasks if task in results}
    if "ppl" in results:  # mean perplexity per length
        summary["ppl"] = {n: r["ppl_mean"] for n, r in results["ppl"]["by_length"].items()}
    if out_dir is not None:
        print(json.dumps(summary))
        print(f"megamid eval: wrote {results['files']['markdown']}")
    return 0
