"""python tests/checkpoint/dist_state_driver.py OUT_DIR

Test driver for megamid.checkpoint.dist_state in one process (megatron imported once): saves a tiny
model, tries to save it again with a NaN weight, then damages copies of the good checkpoint (truncated
shard, deleted shard, deleted .metadata, corrupt megamid.json; each also as a legacy checkpoint without
a manifest) and loads each. Writes OUT_DIR/result.json: {case: "ok" | the CheckpointError message}.
"""

import json
import os
import shutil
import sys

import torch

MODEL = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 64,
         "ffn_hidden_size": 64}


def damage(path: str, how: str) -> None:
    shard = sorted(n for n in os.listdir(path) if n.endswith(".distcp"))[0]
    if how == "truncated_shard":
        with open(os.path.join(path, shard), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(path, shard)) // 2)
    elif how == "deleted_shard":
        os.remove(os.path.join(path, shard))
    elif how == "deleted_metadata":
        os.remove(os.path.join(path, ".metadata"))
    elif how == "corrupt_state":
        with open(os.path.join(path, "megamid.json"), "w") as f:
            f.write('{"step": 1, "layout": ')


def main():
    from megamid.checkpoint import dist_state
    from megamid.checkpoint.checkpointer import MANIFEST, CheckpointError
    from megamid.config import ModelConfig, build
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks
    from megamid.platform import Layout, init_model_parallel, init_process_group, set_seed, shutdown

    out = sys.argv[1]
    init_process_group()
    init_model_parallel(Layout())
    set_seed(0)
    chunks = build_gpt_chunks(build(ModelConfig, MODEL, "model"), ParallelConfig())
    ckpt_dir = os.path.join(out, "ckpt")
    result = {}

    def attempt(name, fn):
        try:
            fn()
            result[name] = "ok"
        except CheckpointError as exc:
            result[name] = str(exc)

    def save(step):
        return dist_state.save_checkpoint(ckpt_dir, step, chunks, None, {"step": step}, {}, False)

    attempt("save_1", lambda: save(1))
    weight = dict(chunks[0].named_parameters())["decoder.layers.1.mlp.linear_fc2.weight"]
    with torch.no_grad():
        weight[0, 0] = float("nan")
    attempt("save_nan", lambda: save(2))
    result["after_nan"] = {"listing": sorted(os.listdir(ckpt_dir)),
                           "latest": open(os.path.join(ckpt_dir, "latest")).read().strip()}
    with torch.no_grad():
        weight[0, 0] = 0.0

    good = os.path.join(ckpt_dir, "iter_0000001")
    load = lambda path: dist_state.load_checkpoint(path, chunks, None, False, load_optimizer=False)  # noqa: E731
    attempt("load_good", lambda: load(good))
    for how in ("truncated_shard", "deleted_shard", "deleted_metadata", "corrupt_state"):
        for legacy in (False, True):
            case = os.path.join(out, f"{how}{'_legacy' if legacy else ''}", "iter_0000001")
            shutil.copytree(good, case)
            if legacy:
                os.remove(os.path.join(case, MANIFEST))
            damage(case, how)
            attempt(os.path.basename(os.path.dirname(case)), lambda: load(case))
    with open(os.path.join(ckpt_dir, "latest"), "w") as f:
        f.write("iter_0000042\n")
    attempt("latest_missing_dir", lambda: dist_state.find_latest(ckpt_dir))
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    shutdown()


if __name__ == "__main__":
    main()
