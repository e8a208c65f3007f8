"""HF Llama / Mistral / Qwen2 / Qwen3 directories <-> megamid checkpoints, streamed tensor by tensor.

`import_hf` reads config.json, checks every safetensors weight's name and shape against it, declares the
megatron weights (hf_llama's mapping, dist_layout's TP chunks) to megatron's checkpoint layout with
data-free placeholders, and writes one megatron-core torch_dist checkpoint with `save_streaming`, which
makes each TP chunk from just the HF rows it holds when that chunk is written: peak memory is about two
of the largest chunks (the embedding's, for most models) plus the process itself, not the model.
`export_hf` loads a megamid checkpoint saved at any TP/PP one layer at a time into TP=1 tensors
(megatron's loader reshards, reading only that layer's slice) and streams them into safetensors files,
with the config.json of the rope the checkpoint's phase trained with.

Both run megatron in this process (a world of one: megamid.platform's process group, CPU mode
where there is no GPU). Input HF files are JSON and safetensors only (headers parsed and checked here);
nothing is unpickled from them. A megamid checkpoint is read with megatron-core's loader (torch DCP
metadata, which is a pickle; common.pt through torch.load's default weights_only=True): export only
checkpoints you trust, as for training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any, Callable

import torch

from megamid.checkpoint.checkpointer import begin_dir, publish_dir
from megamid.checkpoint.dist_layout import checkpoint_key, tp_slices
from megamid.checkpoint.hf_llama import (
    attention_window_notes,
    fuse_qkv,
    hf_config,
    hf_layer_to_megatron,
    hf_weight_shapes,
    layer_weight_sources,
    megatron_layer_to_hf,
    model_config_from_hf,
)
from megamid.checkpoint.record import checkpoint_record, load_record, special_ids_from_hf, special_ids_of
from megamid.checkpoint.safetensors_files import CheckpointFileError, SafetensorsReader, SafetensorsWriter
from megamid.config.base import ConfigError
from megamid.config.model import ModelConfig
from megamid.rope import model_rope_scaling

STATE_FILE = "megamid.json"   # as megamid.checkpoint.checkpointer writes it
TOKENIZER_DIR = "hf_tokenizer"
RECIPE_SNIPPET = "recipe_base.yaml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


# ---- shared ----------------------------------------------------------------------------------------
def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuse a non-empty existing --out unless asked to overwrite it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointFileError(f"--out {out}: exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise CheckpointFileError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")


def _init_megatron_io() -> None:
    # dist_checkpointing needs a process group; a world of one outside torchrun
    from megamid.platform import init_process_group

    init_process_group()
    if torch.distributed.get_world_size() != 1:
        raise ConfigError(f"conversion runs in one process (world size {torch.distributed.get_world_size()}); "
                          "run the tool with plain python, not torchrun")


def _layer_groups(model_cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """HF weight names grouped as they are converted: embedding, each layer, final norm, lm_head."""
    groups: dict[str, list[str]] = {}
    for name in hf_weight_shapes(model_cfg):
        group = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else name
        groups.setdefault(group, []).append(name)
    return list(groups.items())


_TOP_NAMES = {"model.embed_tokens.weight": "embedding.word_embeddings.weight",
              "model.norm.weight": "decoder.final_layernorm.weight", "lm_head.weight": "output_layer.weight"}
_HF_TOP = {v: k for k, v in _TOP_NAMES.items()}


def _to_megatron(group: str, tensors: dict[str, torch.Tensor], model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    if group in _TOP_NAMES:
        return {_TOP_NAMES[group]: tensors[group]}
    prefix = group + "."
    layer = {k[len(prefix):]: v for k, v in tensors.items()}
    dst = "decoder.layers." + group.split(".")[2] + "."
    return {dst + k: v for k, v in hf_layer_to_megatron(layer, model_cfg, prefix).items()}


def _megatron_weight(reader: SafetensorsReader, name: str, model_cfg: ModelConfig) -> torch.Tensor:
    """One full megatron weight, read from the HF tensors it is made of (and nothing else)."""
    if name in _HF_TOP:
        return reader.get(_HF_TOP[name])
    _, _, i, suffix = name.split(".", 3)
    prefix = f"model.layers.{i}."
    sources = layer_weight_sources(model_cfg)[suffix]
    return hf_layer_to_megatron({s: reader.get(prefix + s) for s in sources}, model_cfg, prefix, only=(suffix,))[suffix]


def _megatron_chunk(reader: SafetensorsReader, name: str, i: int, tp: int, model_cfg: ModelConfig) -> torch.Tensor:
    """Chunk i of megatron weight `name` at TP=tp, in dist_layout.tp_slices' order. Where TP splits rows
    (embedding, output layer, q/k/v, gate/up) only the HF rows the chunk holds are read, so a TP=8 import
    never holds a whole embedding or MLP; column splits (o_proj, down_proj) read the whole HF tensor."""
    axis = checkpoint_key(name)[2]
    if axis is None or axis == 1:
        full = _megatron_weight(reader, name, model_cfg)
        return full if axis is None else tp_slices(full, axis, tp)[i][0].contiguous()
    if name in _HF_TOP:  # embedding / output layer: vocabulary rows
        rows = reader.shape(_HF_TOP[name])[0] // tp
        return reader.get(_HF_TOP[name], rows=(i * rows, (i + 1) * rows))
    _, _, layer, suffix = name.split(".", 3)
    prefix = f"model.layers.{layer}."
    sources = layer_weight_sources(model_cfg)[suffix]
    if axis == "swiglu":  # chunks 0..tp-1 are gate's row blocks, tp..2tp-1 up's
        rows = model_cfg.ffn_size // tp
        return reader.get(prefix + sources[i // tp], rows=((i % tp) * rows, (i % tp + 1) * rows))
    # linear_qkv: rank i holds query groups [i G/tp, (i+1) G/tp), each its queries, then key, then value
    heads, groups, d = model_cfg.num_attention_heads, model_cfg.query_groups, model_cfg.head_dim
    q_rows, kv_rows = heads // tp * d, groups // tp * d
    q, k, v = (reader.get(prefix + src, rows=(i * n, (i + 1) * n)) for src, n in zip(sources, (q_rows, kv_rows, kv_rows)))
    local = dataclasses.replace(model_cfg, num_attention_heads=heads // tp, num_query_groups=groups // tp, kv_channels=d)
    return fuse_qkv(q, k, v, local)


def _megatron_names(group: str, model_cfg: ModelConfig) -> dict[str, tuple]:
    """The megatron names and full shapes a group converts to (from shapes only: no data)."""
    shapes = hf_weight_shapes(model_cfg)
    fake = {n: torch.empty(shapes[n], device="meta") for n in shapes if n == group or n.startswith(group + ".")}
    return {k: tuple(v.shape) for k, v in _to_megatron(group, fake, model_cfg).items()}


# ---- HF -> megamid ---------------------------------------------------------------------------------
def read_hf_config(hf_dir: str) -> dict[str, Any]:
    if not os.path.isdir(hf_dir):
        raise CheckpointFileError(f"--hf-dir {hf_dir}: no such directory")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointFileError(f"{path}: missing (a transformers model directory has config.json)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointFileError(f"{path}: not valid JSON ({exc})") from None


def check_hf_weights(reader: SafetensorsReader, model_cfg: ModelConfig, hf_dir: str) -> None:
    """Every weight the config implies is present with its shape; nothing unknown is left over."""
    expected = hf_weight_shapes(model_cfg)
    found = set(reader.keys())
    missing = [n for n in expected if n not in found]
    if missing:
        raise CheckpointFileError(f"{hf_dir}: {len(missing)} weight(s) that config.json implies are missing from the "
                                  f"safetensors files, e.g. {', '.join(missing[:3])}")
    ignored = {"lm_head.weight"} if model_cfg.tie_embeddings else set()
    unknown = sorted(n for n in found - set(expected) - ignored if not n.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise CheckpointFileError(f"{hf_dir}/{reader.file_of[unknown[0]]}: holds weight(s) a Llama / Mistral / Qwen2 "
                                  f"model of this config.json does not have, e.g. {', '.join(unknown[:3])}")
    for name, shape in expected.items():
        got = reader.shape(name)
        if got != shape:
            raise CheckpointFileError(f"{hf_dir}/{reader.file_of[name]}: {name} has shape {list(got)}, expected "
                                      f"{list(shape)} from config.json")


def check_import_layout(model_cfg: ModelConfig, tp: int, pp: int) -> None:
    """The model divides over --tp / --pp; errors name the config.json key, its value and the flag."""
    for key, value, what in (("num_attention_heads", model_cfg.num_attention_heads, "attention heads"),
                             ("num_key_value_heads", model_cfg.query_groups, "key/value heads"),
                             ("vocab_size", model_cfg.vocab_size, "the vocabulary"),
                             ("intermediate_size", model_cfg.ffn_size, "the MLP width")):
        if value % tp:
            raise ConfigError(f"config.json {key}={value} is invalid with --tp {tp}: {what} must be divisible by "
                              f"the tensor-parallel size (try --tp {math.gcd(value, tp)})")
    if model_cfg.num_layers % pp:
        raise ConfigError(f"config.json num_hidden_layers={model_cfg.num_layers} is invalid with --pp {pp}: layers "
                          "must divide evenly into the pipeline stages")


def _read_generation_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointFileError(f"{path}: not valid JSON ({exc})") from None


def import_hf(hf_dir: str, out: str, tp: int = 1, pp: int = 1, dtype: str | None = None, overwrite: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert an HF directory to a megamid checkpoint at `out` (usable as a recipe's `base`).

    tp: the TP layout the shards are written in (one process writes every rank's slice); pp: checked and
    recorded (layers are separate chunks in every PP layout). Returns the megamid.json written."""
    from megamid.config.loader import to_dict

    check_out_dir(out, overwrite)
    config = read_hf_config(hf_dir)
    model_cfg = model_config_from_hf(config)
    if dtype is not None:
        model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
    check_import_layout(model_cfg, tp, pp)
    reader = SafetensorsReader(hf_dir)
    check_hf_weights(reader, model_cfg, hf_dir)
    for note in attention_window_notes(config):
        log("warning: " + note)

    _init_megatron_io()
    from megamid.checkpoint.dist_layout import extra_state_objects
    from megamid.checkpoint.streaming_save import save_streaming

    target = model_cfg.torch_dtype
    tensors = {name: (shape, target) for group, _ in _layer_groups(model_cfg)
               for name, shape in _megatron_names(group, model_cfg).items()}
    partial = begin_dir(out)
    save_streaming(partial, tensors, lambda name, i: _megatron_chunk(reader, name, i, tp, model_cfg).to(target),
                   model_cfg.num_layers, tp, extra_state_objects(model_cfg.num_layers))

    tokenizer = _copy_tokenizer_files(hf_dir, os.path.join(partial, TOKENIZER_DIR), os.path.abspath(out), log)
    recipe = {"model": to_dict(model_cfg), "tokenizer": tokenizer}
    generation = _read_generation_config(hf_dir)
    meta = {"step": 0,
            # no RNG state is saved: a null layout never equals a run's, so load_checkpoint does not look for it
            "layout": None, "shard_layout": {"tp": tp, "pp": pp},
            "state": {"source": "hf", "hf_dir": os.path.abspath(hf_dir)},
            "config": recipe, "hf_config": config,
            **checkpoint_record(model_cfg, tokenizer, special_ids_from_hf(config, generation), model_cfg.rope,
                                {"kind": "hf-import", "sources": [os.path.abspath(hf_dir)]}, generation)}
    with open(os.path.join(partial, STATE_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    _write_recipe_snippet(os.path.join(partial, RECIPE_SNIPPET), recipe, os.path.abspath(out), hf_dir)
    publish_dir(partial, out)  # with a manifest: a megamid checkpoint that verifies
    log(f"wrote {out}: {model_cfg.num_parameters() / 1e6:.1f}M parameters, {model_cfg.dtype}, shards laid out "
        f"for TP={tp} (loads at any TP/PP); recipe snippet {os.path.join(out, RECIPE_SNIPPET)}")
    return meta


def _copy_tokenizer_files(hf_dir: str, dst: str, final_out: str, log) -> str:
    """Copies the tokenizer files found; returns the recipe's `tokenizer:` value (as it will be under `out`)."""
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    if present:
        os.makedirs(dst)
        for name in present:
            shutil.copy2(os.path.join(hf_dir, name), os.path.join(dst, name))
    for name in ("tokenizer.json", "tokenizer.model"):
        if name in present:
            return os.path.join(final_out, TOKENIZER_DIR, name)
    log(f"warning: {hf_dir} has no tokenizer.json or tokenizer.model; recipe_base.yaml says tokenizer: byte, "
        "whose ids will not match this model's vocabulary: set your tokenizer there")
    return "byte"


def _write_recipe_snippet(path: str, recipe: dict, base: str, hf_dir: str) -> None:
    import yaml

    body = yaml.safe_dump({"base": base, "tokenizer": recipe["tokenizer"], "model": recipe["model"]},
                          sort_keys=False, default_flow_style=None, width=110)
    with open(path, "w") as f:
        f.write(f"# megamid recipe start, written by tools/convert_hf_to_megamid.py from {os.path.abspath(hf_dir)}.\n"
                "# Copy into a recipe and add training/data/phases; the model section must stay as it is for the\n"
                "# base weights to load (parallel layout, dtype and rope per phase may change).\n" + body)


# ---- megamid -> HF ---------------------------------------------------------------------------------
def resolve_checkpoint(ckpt: str) -> str:
    """checkpointer.resolve (verified), reported as this tool's file error."""
    from megamid.checkpoint.checkpointer import resolve

    try:
        return resolve(ckpt, "--ckpt")
    except ConfigError as exc:
        raise CheckpointFileError(str(exc)) from None


def extended_window(model_cfg: ModelConfig, rope: dict) -> int:
    """max_position_embeddings for config.json: the window a scaled rope extends to (original length x
    factor), as released long-context models write it (transformers warns of an implicit factor of 1
    otherwise); the model's own for unscaled ropes and for dynamic NTK (whose to_hf sets its own)."""
    scaling = model_rope_scaling(model_cfg, rope, "rope")
    factor = getattr(scaling, "factor", None)
    if scaling.type in ("default", "dynamic") or not factor:
        return model_cfg.max_position_embeddings
    original = getattr(scaling, "original_max_position_embeddings", None) or model_cfg.max_position_embeddings
    return max(model_cfg.max_position_embeddings, int(round(original * float(factor))))


def _special_ids(record: dict) -> dict:
    """{bos, eos, pad}: the record's; a record without any (older checkpoints) takes its tokenizer's (eod,
    pad). Ids outside the vocabulary are dropped (transformers refuses a pad id past the embedding)."""
    ids = dict(record["special_ids"])
    if all(v is None for v in ids.values()):
        try:
            from megamid.data.tokenizer_files import load_tokenizer

            ids = special_ids_of(load_tokenizer(record["tokenizer"]))
        except (OSError, ValueError, ImportError):
            pass
    vocab = record["model"]["vocab_size"]
    inside = lambda v: all(0 <= i < vocab for i in (v if isinstance(v, list) else [v]))  # noqa: E731
    return {k: v if v is not None and inside(v) else None for k, v in ids.items()}


def export_config(record: dict) -> tuple[dict, dict]:
    """(config.json, generation_config.json) of a checkpoint record: the model, the rope it trained with
    (rope_parameters and the legacy rope_scaling), the extended window and the special-token ids."""
    from megamid.config.loader import build

    model_cfg = build(ModelConfig, record["model"], "model")
    rope = dict(record["rope"])
    config = hf_config(model_cfg, rope)
    if model_rope_scaling(model_cfg, rope, "rope").type != "dynamic":  # HF's dynamic NTK starts scaling past max_position_embeddings: keep to_hf's
        config["max_position_embeddings"] = extended_window(model_cfg, rope)
    ids = {f"{k}_token_id": v for k, v in _special_ids(record).items() if v is not None}
    config.update(ids)
    generation = {**(record.get("generation") or {}), **ids}
    generation.setdefault("_from_model_config", False)
    return config, generation


def export_hf(ckpt: str, out: str, overwrite: bool = False, max_file_bytes: int = 5 << 30,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert a megamid checkpoint (any kind, any TP/PP) to an HF directory; returns the config.json written."""
    from megamid.config.loader import build

    path = resolve_checkpoint(ckpt)
    try:
        record = load_record(path)
    except ConfigError as exc:
        raise CheckpointFileError(str(exc)) from None
    model_cfg = build(ModelConfig, record["model"], "model")
    rope = dict(record["rope"])
    config, generation = export_config(record)
    check_out_dir(out, overwrite)

    _init_megatron_io()
    from megatron.core import dist_checkpointing

    saved = dist_checkpointing.load_tensors_metadata(path)
    dtype = _check_saved_shapes(saved, model_cfg, path)
    pieces = _export_pieces(model_cfg)
    partial = begin_dir(out)
    writer = SafetensorsWriter(partial, [(n, dtype, tuple(t.shape)) for _, hf in pieces for n, t in hf.items()],
                               max_file_bytes)
    for group, _ in _layer_groups(model_cfg):
        # one layer (or the embedding, final norm, output layer) in memory at a time
        names = _megatron_names(group, model_cfg)
        loaded = _load_group(dist_checkpointing, path, names, model_cfg.num_layers, dtype)
        for name in names:
            for hf_name, tensor in _hf_pieces(name, loaded.pop(name), model_cfg).items():
                writer.write(hf_name, tensor)
    files = writer.close()
    with open(os.path.join(partial, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(partial, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=1)
    tokenizer = _export_tokenizer(record["tokenizer"], partial, log)
    publish_dir(partial, out, manifest=False)  # an HF folder, not a megamid checkpoint
    log(f"wrote {out}: {config['architectures'][0]}, rope {rope.get('type')}, window "
        f"{config['max_position_embeddings']}, eos {config.get('eos_token_id')}, {len(files)} safetensors file(s), "
        f"tokenizer: {tokenizer}")
    return config


def _hf_pieces(name: str, tensor: torch.Tensor, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """One full megatron weight -> the HF weights it holds (q/k/v from linear_qkv, gate/up from linear_fc1)."""
    if not name.startswith("decoder.layers."):
        return {_HF_TOP[name]: tensor}
    i, suffix = name.split(".", 3)[2:]
    return {f"model.layers.{i}.{k}": v.contiguous() for k, v in megatron_layer_to_hf({suffix: tensor}, model_cfg).items()}


def _export_pieces(model_cfg: ModelConfig) -> list[tuple[str, dict]]:
    """(megatron name, {HF name: meta tensor}) in export order: embedding, layer by layer, norm, lm_head."""
    return [(name, _hf_pieces(name, torch.empty(shape, device="meta"), model_cfg))
            for group, _ in _layer_groups(model_cfg) for name, shape in _megatron_names(group, model_cfg).items()]


def _load_group(dist_checkpointing, path: str, names: dict[str, tuple], num_layers: int, dtype) -> dict:
    """The full (TP=1) tensors of `names` ({megatron name: shape}, one layer's or top-level weights) from a
    checkpoint saved at any TP/PP: megatron's loader reshards, reading only this layer's slice of each
    stacked key."""
    from megatron.core.dist_checkpointing import ShardedTensor

    template = {}
    for name, shape in names.items():
        key, layer, _ = checkpoint_key(name)
        if layer is None:
            template[name] = ShardedTensor.from_rank_offsets(key, torch.empty(tuple(shape), dtype=dtype), replica_id=0)
        else:
            # [1, *shape] at (layer, 0, ...) of [num_layers, *shape]: with megatron's prepended layer axis
            # instead, its torch ShardedTensor would declare every layer's chunk on this (only) rank
            data = torch.empty((1, *shape), dtype=dtype)
            template[name] = ShardedTensor.from_rank_offsets(key, data, (0, layer, num_layers), replica_id=0)
    # only this layer's slice of each stacked key is read: the access-integrity check wants all of them
    loaded = dist_checkpointing.load(template, path, validate_access_integrity=False)
    # the result also holds the checkpoint's common state (a training step's optimizer param groups, ...)
    return {name: loaded[name][0] if checkpoint_key(name)[1] is not None else loaded[name] for name in template}


def _check_saved_shapes(saved: dict, model_cfg: ModelConfig, path: str) -> torch.dtype:
    """Every tensor the model config implies is in the checkpoint with its global shape; returns its dtype."""

    dtypes = set()
    for group, _ in _layer_groups(model_cfg):
        for name, shape in _megatron_names(group, model_cfg).items():
            key, layer, _ = checkpoint_key(name)
            want = shape if layer is None else (model_cfg.num_layers, *shape)
            if key not in saved:
                raise CheckpointFileError(f"{path}: has no tensor {key} (needed for {name}); its config.model "
                                          "does not match its weights")
            got = tuple(saved[key].global_shape)
            if got != want:
                raise CheckpointFileError(f"{path}: {key} has shape {list(got)}, expected {list(want)} from "
                                          f"{STATE_FILE} config.model")
            dtypes.add(saved[key].dtype)
    if len(dtypes) != 1:
        raise CheckpointFileError(f"{path}: weights in several dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _export_tokenizer(tokenizer: str, out: str, log) -> str:
    """Copies the checkpoint's tokenizer next to the weights; returns what was done, in words."""
    if tokenizer == "byte":
        log("note: the recipe's tokenizer is megamid's byte tokenizer (ids 0-255 = bytes, then pad and eod); "
            "it has no HF tokenizer file, so none is written")
        return "none (byte)"
    if not os.path.isfile(tokenizer):
        log(f"warning: the recipe's tokenizer {tokenizer} is not a file here; no tokenizer written")
        return "none (not found)"
    src_dir = os.path.dirname(os.path.abspath(tokenizer))
    if tokenizer.endswith(".json"):
        shutil.copy2(tokenizer, os.path.join(out, "tokenizer.json"))
        # the converted checkpoint's own folder also holds the HF tokenizer config and special tokens
        for name in TOKENIZER_FILES[1:]:
            if name not in ("tokenizer.model",) and os.path.isfile(os.path.join(src_dir, name)):
                shutil.copy2(os.path.join(src_dir, name), os.path.join(out, name))
        return tokenizer
    shutil.copy2(tokenizer, os.path.join(out, "tokenizer.model"))
    return f"{tokenizer} (sentencepiece, as tokenizer.model)"


__all__ = ["RECIPE_SNIPPET", "TOKENIZER_DIR", "check_hf_weights", "check_out_dir", "export_hf", "import_hf",
           "export_config", "extended_window", "read_hf_config", "resolve_checkpoint"]
