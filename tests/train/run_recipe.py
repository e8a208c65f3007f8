"""python tests/train/run_recipe.py OUT_DIR RECIPE [key=value ...] [--exit-after-steps N] [--layout k=v;k=v ...]
                                   [--crash-before-publish STEP]

Test driver (also under torchrun): trains RECIPE once per --layout (each a ';'-separated list of
overrides applied on top of the others, in this one launch), and writes OUT_DIR/result.json (rank 0:
losses per layout), OUT_DIR/history_<i>.json (rank 0: every step's metrics) and
OUT_DIR/weights_<i>_rank<r>.pt (this rank's model chunks). --crash-before-publish STEP: the process
dies (exit 17) when the save of STEP has written every file, just before it would be published.
"""

import argparse
import json
import os

import torch

from megamid.recipe import load_plan
from megamid.model import unwrap
from megamid.platform import shutdown
from megamid.train.loop import Trainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--exit-after-steps", type=int)
    parser.add_argument("--layout", action="append", default=None)
    parser.add_argument("--from-phase")
    parser.add_argument("--branch")
    parser.add_argument("--crash-before-publish", type=int)
    args = parser.parse_args()
    if args.crash_before_publish is not None:
        from megamid.checkpoint.checkpointer import Checkpointer

        def crash(self, partial, step):
            if step == args.crash_before_publish:
                os._exit(17)

        Checkpointer._before_publish = crash
    os.makedirs(args.out, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    results = {}
    for i, layout in enumerate(args.layout or [""]):
        extra = [kv for kv in layout.split(";") if kv]
        plan = load_plan(args.recipe, args.overrides + extra, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        trainer = Trainer(plan, log=lambda *a, **k: None, exit_after_steps=args.exit_after_steps,
                          from_phase=args.from_phase, branch=args.branch)
        out = trainer.run()
        results[layout or "default"] = [h["loss"] for h in out["history"]]
        if rank == 0:
            with open(os.path.join(args.out, f"history_{i}.json"), "w") as f:
                json.dump(out["history"], f)
        weights = [{k: v.detach().clone() for k, v in unwrap(c).state_dict().items() if torch.is_tensor(v)}
                   for c in trainer.chunks]
        torch.save(weights, os.path.join(args.out, f"weights_{i}_rank{rank}.pt"))
    if rank == 0:
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(results, f)
    shutdown()


if __name__ == "__main__":
    main()
