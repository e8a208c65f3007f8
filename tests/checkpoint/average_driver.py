"""python tests/checkpoint/average_driver.py OUT_DIR

Test driver for checkpoint averaging (one process, so megatron is imported once): writes a small
synthetic corpus and a tiny recipe, trains checkpoints A and B (1 step, different seeds), averages [A, A], [A, B] and [A, B] with weights 3,1
(the last through tools/average_checkpoints.py), tries a checkpoint of another model and one of another rope, loads every
output into a fresh model, and starts a run from the mean as `base`. Writes OUT_DIR/weights.pt
({name: {param: tensor}}) and OUT_DIR/result.json.
"""

import contextlib
import io
import json
import os
import shutil
import socket
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = {
    "name": "tiny-average",
    "model": {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2,
              "vocab_size": 258, "ffn_hidden_size": 64},
    "training": {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": 32, "train_steps": 1,
                 "lr": {"style": "constant", "peak_lr": 1.0e-2}},
    "checkpoint": {"save_interval": None},
}


def write_recipe(out: str) -> str:
    import yaml

    from megamid.data.synthetic import write_synthetic_corpus
    from megamid.data.tokenizer import ByteTokenizer

    prefix = os.path.join(out, "syn")
    write_synthetic_corpus(prefix, ByteTokenizer(), 50, 0)
    path = os.path.join(out, "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({**RECIPE, "data": {"sources": [{"name": "syn", "prefix": prefix, "weight": 1.0}]}}, f)
    return path


def train(recipe_path: str, ckpt_dir: str, *overrides) -> tuple:
    from megamid.model import unwrap
    from megamid.recipe import load_plan
    from megamid.train.loop import Trainer

    plan = load_plan(recipe_path, ["training.train_steps=1", f"checkpoint.dir={ckpt_dir}",
                                   "checkpoint.save_final=true", *overrides])
    trainer = Trainer(plan, log=lambda *a, **k: None)
    out = trainer.run()
    weights = {k: v.detach().clone() for k, v in unwrap(trainer.chunks[0]).state_dict().items()
               if torch.is_tensor(v) and v.is_floating_point()}
    return weights, out


def load(path: str, model_dict: dict) -> dict:
    from megamid.config import ModelConfig, build
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks, unwrap
    from megamid.platform import Layout, init_model_parallel
    from megamid.checkpoint.dist_state import find_latest, load_checkpoint

    init_model_parallel(Layout())
    chunks = build_gpt_chunks(build(ModelConfig, model_dict, "model"), ParallelConfig())
    load_checkpoint(find_latest(path), chunks, None, use_distributed_optimizer=False, load_optimizer=False)
    return {k: v.detach().clone() for k, v in unwrap(chunks[0]).state_dict().items()
            if torch.is_tensor(v) and v.is_floating_point()}


def tool(*argv) -> tuple:
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import average_checkpoints

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = average_checkpoints.main(list(argv))
    with socket.socket() as s:  # the tool shut the process group down; the next init needs a fresh port
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    return rc, err.getvalue()


def main():
    from megamid.checkpoint.average import average_checkpoints
    from megamid.checkpoint.checkpointer import MANIFEST, file_entries
    from megamid.checkpoint.dist_state import find_latest, read_state

    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    recipe = write_recipe(out)
    p = lambda name: os.path.join(out, name)  # noqa: E731
    weights = {}
    weights["a"], _ = train(recipe, p("a"), "training.seed=7")
    weights["b"], _ = train(recipe, p("b"), "training.seed=8")
    model = read_state(find_latest(p("a")))["config"]["model"]

    quiet = lambda *a, **k: None  # noqa: E731
    average_checkpoints([p("a"), find_latest(p("a"))], p("same"), log=quiet)
    average_checkpoints([p("a"), p("b")], p("mean"), log=quiet)
    for name in ("same", "mean"):
        weights[name] = load(p(name), model)
    _, base_run = train(recipe, p("from_mean"), f"base={p('mean')}", "checkpoint.load=none")

    def edited_copy(name, edit):
        """A's checkpoint with its megamid.json edited, and the manifest told (so the copy verifies)."""
        path = p(name)
        shutil.copytree(find_latest(p("a")), path)
        meta = read_state(path)
        edit(meta)
        with open(os.path.join(path, "megamid.json"), "w") as f:
            json.dump(meta, f)
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        manifest["files"].update(file_entries(path, ["megamid.json"]))
        with open(os.path.join(path, MANIFEST), "w") as f:
            json.dump(manifest, f)
        return path

    # another model: a different num_layers in its record
    other = edited_copy("other", lambda meta: meta["model"].update(num_layers=1))
    mismatch_rc, mismatch_err = tool(p("a"), other, "--out", p("bad"))
    # the same model trained with another rope
    yarn = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    other_rope = edited_copy("other_rope", lambda meta: meta.update(rope=yarn))
    rope_rc, rope_err = tool(p("a"), other_rope, "--out", p("bad_rope"))
    weighted_rc, weighted_err = tool(p("a"), p("b"), "--out", p("weighted"), "--weights", "3,1")
    weights["weighted"] = load(p("weighted"), model)
    torch.save(weights, p("weights.pt"))
    with open(p("result.json"), "w") as f:
        json.dump({"mismatch": [mismatch_rc, mismatch_err], "rope_mismatch": [rope_rc, rope_err], "weighted": [weighted_rc, weighted_err],
                   "base_run_loss": base_run["history"][-1]["loss"],
                   "mean_state": read_state(find_latest(p("mean")))}, f)
    from megamid.platform import shutdown

    shutdown()


if __name__ == "__main__":
    main()
