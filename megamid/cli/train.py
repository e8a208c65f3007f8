"""megamid train RECIPE.yaml [key.sub=value ...]   (torchrun --nproc-per-node N ... for several processes)

Runs every phase of the recipe, or resumes from CHECKPOINT_DIR/latest where a checkpoint exists.
"""

import sys


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. training.train_steps=100")
    parser.add_argument("--exit-after-steps", type=int, default=None,
                        help="save and stop after this many steps of this launch (a relaunch resumes)")


def run(args) -> int:
    from megamid.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from megamid.platform import shutdown
    from megamid.train.loop import Trainer

    try:
        result = Trainer(recipe, exit_after_steps=args.exit_after_steps).run()
    finally:
        shutdown()
    print(f"done: {result['global_step']} steps{'' if result['finished'] else ' (stopped early; relaunch to resume)'}",
          file=sys.stderr)
    return 0
