"""megamid train RECIPE.yaml [key.sub=value ...]   (torchrun --nproc-per-node N ... for several processes)

Plans the recipe first (every check `megamid plan` runs, at this launch's world size) and refuses to start
on any problem; then runs every phase, or resumes from CHECKPOINT_DIR/latest where a checkpoint exists.
Branch anneals: megamid train RECIPE --from-phase anneal --branch mix-b (own directory, same start).
"""

import os
import sys


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. training.train_steps=100")
    parser.add_argument("--exit-after-steps", type=int, default=None,
                        help="save and stop after this many steps of this launch (a relaunch resumes)")
    parser.add_argument("--from-phase", default=None,
                        help="branch anneal: start at this phase from the main run's checkpoint at the end of the "
                             "phase before it (with --branch)")
    parser.add_argument("--branch", default=None,
                        help="branch label: checkpoints go to CHECKPOINT_DIR/branches/LABEL (with --from-phase)")


def launch_world_size() -> int:
    """The world size torchrun announces (1 for a plain launch)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def run(args) -> int:
    from megamid.recipe import load_plan

    plan = load_plan(args.recipe, args.overrides, world_size=launch_world_size())
    from megamid.platform import shutdown
    from megamid.train.loop import Trainer

    try:
        result = Trainer(plan, exit_after_steps=args.exit_after_steps, from_phase=args.from_phase,
                         branch=args.branch).run()
    finally:
        shutdown()
    print(f"done: {result['global_step']} steps{'' if result['finished'] else ' (stopped early; relaunch to resume)'}",
          file=sys.stderr)
    return 0
