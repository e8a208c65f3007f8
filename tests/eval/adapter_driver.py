"""python -m torch.distributed.run --standalone --nproc-per-node=2 tests/eval/adapter_driver.py CKPT OUT_DIR

Test driver: loads CKPT with megamid.load (TP=PP=1, the two ranks as data-parallel replicas) and again
under TP=2, PP=2 (DDP-wrapped, as the trainer holds it) and interleaved
PP=2 x 2, runs MegatronLM's logits (all positions and the last few) and token_logprobs on the same
tokens, and writes OUT_DIR/rank<r>.json: per layout the max |difference| to TP=1, a checksum (to check
every rank returned the same tensor) and whether the chunks were put back in train mode; megamid.load(CKPT,
tp=2) and (pp=2) give the same outputs.
"""

import json
import os
import sys

import torch


def main() -> None:
    ckpt_path, out = sys.argv[1], sys.argv[2]
    from megamid.config import RecipeConfig, build
    from megamid.config.parallel import ParallelConfig
    from megamid.model import build_gpt_chunks, wrap_ddp
    from megamid.model.builder import set_rope
    import megamid
    from megamid.checkpoint import dist_state as ckpt
    from megamid.model.inference import MegatronLM
    from megamid.platform import Layout, init_model_parallel, shutdown

    tokens = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(0))

    from megamid.eval.scoring import candidate_logprobs

    candidates = [[5], [6, 7], [8, 9, 10], [11, 12]]

    def outputs(model):
        # candidate scores: shared-prefix rows where the layout takes masks (TP, PP), one row each under CP
        return {"logits": model.logits(tokens), "last": model.logits(tokens, last_n=5),
                "logprobs": model.token_logprobs(tokens),
                "scores": torch.tensor(candidate_logprobs(model, tokens[0, :30].tolist(), candidates))}

    model, _ = megamid.load(ckpt_path, max_batch=3)
    ref = outputs(model)
    logp = torch.log_softmax(ref["logits"].double(), -1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    report = {"reference": {"logprobs_vs_log_softmax": float((logp - ref["logprobs"]).abs().max()),
                            "last_vs_all": float((ref["last"] - ref["logits"][:, -5:]).abs().max())}}

    path = ckpt.resolve_checkpoint(ckpt_path)
    meta = ckpt.read_state(path)
    recipe = build(RecipeConfig, meta["config"])
    rope = {p.name: p.rope or recipe.model.rope for p in recipe.phase_specs()}[meta["state"]["phase"]]
    layouts = {"tp2": ParallelConfig(tensor_model_parallel_size=2),
               "pp2_ddp": ParallelConfig(pipeline_model_parallel_size=2),
               "pp2_vpp2": ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
               "cp2_allgather": ParallelConfig(context_parallel_size=2, cp_comm="allgather"),
               "cp2_ring": ParallelConfig(context_parallel_size=2, cp_comm="ring")}
    for name, parallel in layouts.items():
        init_model_parallel(Layout(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                                   parallel.virtual_pipeline_model_parallel_size, parallel.context_parallel_size))
        chunks = build_gpt_chunks(recipe.model, parallel)
        for c in chunks:
            set_rope(c, rope)
        ckpt.load_checkpoint(path, chunks, None, False, load_optimizer=False)
        if name == "pp2_ddp":
            chunks = wrap_ddp(chunks, parallel)
        for c in chunks:
            c.train()
        got = outputs(MegatronLM(chunks, max_batch=3))
        report[name] = {k: float((got[k] - ref[k]).abs().max()) for k in ref}
        report[name]["checksum"] = {k: float(v.double().sum()) for k, v in got.items()}
        report[name]["train_mode_restored"] = all(m.training for c in chunks for m in c.modules())
    for name, kw in (("load_tp2", {"tp": 2}), ("load_pp2", {"pp": 2})):
        model, _ = megamid.load(ckpt_path, max_batch=3, **kw)
        got = outputs(model)
        report[name] = {k: float((got[k] - ref[k]).abs().max()) for k in ref}
        report[name]["checksum"] = {k: float(v.double().sum()) for k, v in got.items()}
        report[name]["train_mode_restored"] = True  # megamid.load's model is never put in train mode
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(report, f, indent=1)
    shutdown()


if __name__ == "__main__":
    main()
