"""megamid plan RECIPE.yaml [key.sub=value ...] [--world-size N] [--plot out.png] [--no-files]

Validates a recipe before any training (data files, base checkpoint, tokenizer, layout divisibilities
at the world size, rope coverage of every phase's seq_len, LR schedule vs budget) and prints the phase
table: steps, tokens, seq_len, layout, rope, LR, mix. Problems are listed together; exit status 2.
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
    return 0
