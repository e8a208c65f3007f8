"""python tests/checkpoint/convert_driver.py single WORK | torchrun --nproc-per-node 2 tests/checkpoint/convert_driver.py tp2 WORK

Test driver for tests/checkpoint/test_hf_conversion.py (megatron in its own processes: megamid's CPU mode is
process-global). WORK/cases.json lists {case: hf_dir}; WORK/tokens.pt holds the token ids.

single (one process): converts each HF dir at --tp 1 and --tp 2 (import_hf), loads both into a TP=1
GPTModel the way a recipe's `base` does (megamid.checkpoint.dist_state.load_checkpoint, weights only), saves
its fp32 logits, and exports the TP=2-written checkpoint back to HF (export_hf). One checkpoint is also
given a trained phase with another rope in its megamid.json, and exported: the config.json must carry it.
tp2 (two gloo ranks): loads both written layouts into a TP=2 GPTModel, saves the gathered logits, and
checks the ShardedTensors dist_layout writes for TP=2 against the ones the TP=2 model itself declares.
Results: WORK/<case>/<name>.pt (logits) and WORK/<mode>.json.
"""

import json
import os
import shutil
import sys

import torch

PHASE_ROPE = {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, "theta": 1000000.0}
PHASE_CASE = "qwen2_default"


def build(model_cfg, tp):
    from megamid.config import ParallelConfig
    from megamid.model.builder import build_gpt_chunks
    from megamid.platform import Layout, init_model_parallel, set_seed

    init_model_parallel(Layout(tensor_model_parallel_size=tp))
    set_seed(0)
    return build_gpt_chunks(model_cfg, ParallelConfig(tensor_model_parallel_size=tp))[0].eval()


def logits_of(gpt, path, tokens, rope=None):
    """Logits (gathered over TP) of `gpt` with the checkpoint at `path` loaded as a recipe's base loads it."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megamid.model.builder import set_rope
    from megamid.checkpoint.dist_state import load_checkpoint

    load_checkpoint(path, [gpt], None, False, load_optimizer=False)
    if rope is not None:
        set_rope(gpt, rope)
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        return gather_from_tensor_model_parallel_region(gpt(tokens, positions, None)).float()


def model_cfg_of(ckpt):
    from megamid.config import ModelConfig, build

    with open(os.path.join(ckpt, "megamid.json")) as f:
        return build(ModelConfig, json.load(f)["config"]["model"], "model")


def single(work, cases, tokens):
    from megamid.checkpoint.hf_conversion import export_hf, import_hf

    quiet = lambda msg: None  # noqa: E731
    counts = {}
    for case, hf_dir in cases.items():
        d = os.path.join(work, case)
        for tp in (1, 2):
            import_hf(hf_dir, os.path.join(d, f"tp{tp}"), tp=tp, log=quiet)
        cfg = model_cfg_of(os.path.join(d, "tp1"))
        gpt = build(cfg, 1)
        counts[case] = [sum(p.numel() for p in gpt.parameters()), cfg.num_parameters()]
        for tp in (1, 2):
            torch.save(logits_of(gpt, os.path.join(d, f"tp{tp}"), tokens), os.path.join(d, f"written_tp{tp}_run_tp1.pt"))
        export_hf(os.path.join(d, "tp2"), os.path.join(d, "back"), max_file_bytes=40_000, log=quiet)
    # a checkpoint "trained" in a phase with another rope: the export must write that rope
    d = os.path.join(work, PHASE_CASE)
    phase_ckpt = os.path.join(d, "trained", "iter_0000007")
    shutil.copytree(os.path.join(d, "tp1"), phase_ckpt)
    with open(os.path.join(phase_ckpt, "megamid.json")) as f:
        meta = json.load(f)
    # a checkpoint written before the record (megamid.checkpoint.record): its rope comes from the saved phase
    from megamid.checkpoint.record import RECORD_KEYS

    for key in RECORD_KEYS:
        meta.pop(key)
    meta["state"] = {"phase": "long", "phase_step": 7, "global_step": 7}
    meta["config"]["phases"] = [{"name": "short", "rope": None}, {"name": "long", "rope": PHASE_ROPE}]
    with open(os.path.join(phase_ckpt, "megamid.json"), "w") as f:
        json.dump(meta, f)
    from megamid.checkpoint.checkpointer import MANIFEST, file_entries

    with open(os.path.join(phase_ckpt, MANIFEST)) as f:  # an edit the manifest knows of: the checkpoint verifies
        manifest = json.load(f)
    manifest["files"].update(file_entries(phase_ckpt, ["megamid.json"]))
    with open(os.path.join(phase_ckpt, MANIFEST), "w") as f:
        json.dump(manifest, f)
    with open(os.path.join(d, "trained", "latest"), "w") as f:
        f.write("iter_0000007\n")
    gpt = build(model_cfg_of(phase_ckpt), 1)
    torch.save(logits_of(gpt, phase_ckpt, tokens, rope=PHASE_ROPE), os.path.join(d, "phase_run_tp1.pt"))
    export_hf(os.path.join(d, "trained"), os.path.join(d, "back_phase"), log=quiet)
    return {"parameter_counts": counts,
            "streamed_vs_megatron_save": {case: streamed_vs_megatron_save(os.path.join(work, case), hf_dir)
                                          for case, hf_dir in cases.items()},
            "streaming_liveness": streaming_liveness(os.path.join(work, "liveness"))}


def _all_weights(model_cfg):
    from megamid.checkpoint.hf_conversion import _layer_groups, _megatron_names

    return {n: s for group, _ in _layer_groups(model_cfg) for n, s in _megatron_names(group, model_cfg).items()}


def streamed_vs_megatron_save(d, hf_dir):
    """import_hf's streamed TP=2 checkpoint against the same weights saved by megatron's own
    dist_checkpointing.save (all data in memory): the same DCP metadata (keys, global shapes, chunks) and,
    loaded back whole, the same tensors. Returns a list of differences (empty = equal)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from torch.distributed.checkpoint import FileSystemReader

    from megamid.checkpoint.dist_layout import extra_state_objects, sharded_tensors
    from megamid.checkpoint.hf_conversion import _megatron_weight
    from megamid.checkpoint.safetensors_files import SafetensorsReader

    cfg = model_cfg_of(os.path.join(d, "tp2"))
    reader = SafetensorsReader(hf_dir)
    sharded = {}
    for name in _all_weights(cfg):
        for i, st in enumerate(sharded_tensors(name, _megatron_weight(reader, name, cfg).to(cfg.torch_dtype),
                                               cfg.num_layers, 2)):
            sharded[f"{name}/{i}"] = st
    for obj in extra_state_objects(cfg.num_layers):
        sharded[f"{obj.key}/{obj.global_offset}"] = obj
    ref = os.path.join(d, "megatron_saved_tp2")
    os.makedirs(ref)
    dist_checkpointing.save(sharded, ref)

    def layout(path):
        md = FileSystemReader(path).read_metadata().state_dict_metadata
        return {k: (tuple(v.size), sorted((tuple(c.offsets), tuple(c.sizes)) for c in v.chunks))
                if hasattr(v, "chunks") else "bytes" for k, v in md.items()}

    diffs = []
    mine, theirs = layout(os.path.join(d, "tp2")), layout(ref)
    if mine != theirs:
        diffs.append(f"metadata: {sorted(set(mine.items()) ^ set(theirs.items()))[:4]}")
    saved = dist_checkpointing.load_tensors_metadata(ref)
    for key, st in saved.items():
        def whole(path):
            template = {key: ShardedTensor.from_rank_offsets(key, torch.empty(st.global_shape, dtype=st.dtype),
                                                             replica_id=0)}
            return dist_checkpointing.load(template, path)[key]
        if not torch.equal(whole(os.path.join(d, "tp2")), whole(ref)):
            diffs.append(f"{key}: data differs")
    return diffs


def streaming_liveness(out):
    """save_streaming asks for one TP chunk at a time: returns the most earlier-made chunks still alive
    when a chunk is made (1: only the one just written, which DCP's write loop still references), and the
    (name, chunk) pairs in the order they were made."""
    import weakref

    from megamid.checkpoint.dist_layout import checkpoint_key, extra_state_objects, tp_slices
    from megamid.checkpoint.streaming_save import save_streaming
    from megamid.config import ModelConfig

    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, vocab_size=128,
                      ffn_hidden_size=96)
    weights = _all_weights(cfg)
    made, alive_at_make = [], []

    def make(name, i):
        alive_at_make.append(sum(ref() is not None for _, ref in made))
        chunk = tp_slices(torch.randn(weights[name]), checkpoint_key(name)[2], 2)[i][0].clone()
        made.append(((name, i), weakref.ref(chunk)))
        return chunk

    os.makedirs(out)
    save_streaming(out, {n: (s, torch.float32) for n, s in weights.items()}, make, cfg.num_layers, 2,
                   extra_state_objects(cfg.num_layers))
    declared = [(n, i) for n in weights for i in range(len(tp_slices(torch.empty(weights[n], device="meta"),
                                                                         checkpoint_key(n)[2], 2)))]
    return {"max_alive": max(alive_at_make), "made": [list(c) for c, _ in made], "declared": sorted(map(list, declared))}


def layout_mismatches(gpt, model_cfg):
    """(ours - megatron's, megatron's - ours): (key, global shape, offset, fragments) of every main replica."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    from megamid.checkpoint.dist_layout import sharded_tensors

    sd = gpt.sharded_state_dict()
    apply_factories(sd)
    mine = set()
    for name, t in gpt.state_dict().items():
        if torch.is_tensor(t) and not name.endswith("_extra_state"):
            mine.update(_describe(st) for st in sharded_tensors(name, _full(name, t, model_cfg), model_cfg.num_layers, 2))

    def leaves(d):
        for v in d.values():
            yield from leaves(v) if isinstance(v, dict) else (v if isinstance(v, list) else [v])

    local = [_describe(st) for st in leaves(sd) if isinstance(st, ShardedTensor)
             and all(r == 0 for r in (st.replica_id if isinstance(st.replica_id, tuple) else (st.replica_id,)))]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    theirs = {x for rank in gathered for x in rank}
    return sorted(mine - theirs), sorted(theirs - mine)


def _full(name, local, model_cfg):
    """A zero tensor of the full (TP=1) shape of `name` (only the shape matters here)."""
    from megamid.checkpoint.dist_layout import checkpoint_key
    from megamid.checkpoint.hf_conversion import _layer_groups, _megatron_names

    for group, _ in _layer_groups(model_cfg):
        shapes = _megatron_names(group, model_cfg)
        if name in shapes:
            return torch.zeros(shapes[name])
    raise KeyError(f"{name} ({checkpoint_key(name)[0]}): not a converted weight")


def _describe(st):
    return (st.key, tuple(st.global_shape), tuple(st.global_offset), tuple(st.axis_fragmentations))


def tp2(work, cases, tokens):
    import torch.distributed as dist

    out = {}
    for case in cases:
        d = os.path.join(work, case)
        cfg = model_cfg_of(os.path.join(d, "tp1"))
        gpt = build(cfg, 2)
        for tp in (1, 2):
            logits = logits_of(gpt, os.path.join(d, f"tp{tp}"), tokens)
            if dist.get_rank() == 0:
                torch.save(logits, os.path.join(d, f"written_tp{tp}_run_tp2.pt"))
        ours_only, theirs_only = layout_mismatches(gpt, cfg)
        out[case] = {"ours_only": [str(x) for x in ours_only[:5]], "theirs_only": [str(x) for x in theirs_only[:5]]}
    return out


def main(mode, work):
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get('DRIVER_DUMP_S', 240)), exit=True)  # a hung rank shows where, inside the test's timeout
    from megamid.platform import init_process_group, is_rank0, shutdown

    with open(os.path.join(work, "cases.json")) as f:
        cases = json.load(f)
    tokens = torch.load(os.path.join(work, "tokens.pt"), weights_only=True)
    init_process_group()
    result = {"single": single, "tp2": tp2}[mode](work, cases, tokens)
    if is_rank0():
        with open(os.path.join(work, f"{mode}.json"), "w") as f:
            json.dump(result, f)
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
