"""megamid plan RECIPE.yaml [key.sub=value ...] [--world-size N] [--plot out.png] [--no-files] [--gpu NAME [--no-te]]

Validates a recipe before any training (data files, base checkpoint, tokenizer, layout divisibilities
at the world size, rope coverage of every phase's seq_len, LR schedule vs budget) and prints the phase
table: steps, tokens, seq_len, layout, rope, LR, mix. Problems are listed together; exit status 2.
With --gpu, also the per-GPU memory estimate of every phase; a phase that does not fit is a problem.
"""

import os


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for megamid train")
    parser.add_argument("--world-size", type=int, default=None,
                        help="processes of the launch (default: $WORLD_SIZE, else the smallest that fits every phase)")
    parser.add_argument("--plot", metavar="PNG", help="also draw LR, seq_len and mix vs cumulative tokens (needs matplotlib)")
    parser.add_argument("--no-files", action="store_true",
                        help="skip the checks of data files, base checkpoint and tokenizer (plan on another machine)")
    add_gpu_arguments(parser)


def run(args) -> int:
    from megamid.recipe import format_table, load_plan

    world_size = args.world_size
    if world_size is None and os.environ.get("WORLD_SIZE", "").isdigit():
        world_size = int(os.environ["WORLD_SIZE"])
    plan = load_plan(args.recipe, args.overrides, world_size=world_size, check_files=not args.no_files)
    print(format_table(plan))
    if args.plot:
        from megamid.recipe.plot import plot_plan

        print(f"megamid plan: wrote {plot_plan(plan, args.plot)}")
    return run_gpu_check(plan, args)


# ---- --gpu: memory and hardware checks (megamid.recipe.fit) ----

def add_gpu_arguments(parser) -> None:
    parser.add_argument("--gpu", metavar="NAME", help="estimate per-GPU memory on NAME (h100-80gb, h200-141gb, "
                        "a100-80gb, b200-192gb, ...) and check what it can run (FP8, MXFP8)")
    parser.add_argument("--no-te", action="store_true", help="with --gpu: the target has no Transformer Engine")


def run_gpu_check(plan, args) -> int:
    if not args.gpu:
        return 0
    from megamid.config import ConfigError
    from megamid.recipe.fit import format_memory_table, hardware_problems

    print(format_memory_table(plan, args.gpu, te=not args.no_te))
    problems = hardware_problems(plan, args.gpu, te=not args.no_te)
    if problems:
        raise ConfigError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} on {args.gpu}:"
                          + "".join(f"\n  {p}" for p in problems))
    return 0
