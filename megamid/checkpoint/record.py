"""What a megamid checkpoint says about itself: the record in its megamid.json that eval and export read.

Every checkpoint megamid writes (a converted HF base, a training step, a branch step, a soup) carries,
next to its dist-checkpoint shards, these top-level megamid.json keys:

    record_version  1
    model           config.model as a dict (the weights' shapes)
    tokenizer       the tokenizer spec (`byte`, a sentencepiece .model, a HF tokenizer.json)
    special_ids     {"bos": id | None, "eos": id | [ids] | None, "pad": id | None}
    rope            the rope the weights were trained with (a phase's rope dict; the base's for an import)
    provenance      {"kind": hf-import | train | branch | average, "sources": [paths], ...}
    generation      optional: the source model's generation_config.json (exported again)

`checkpoint_record(...)` builds those keys (writers merge them into megamid.json); `read_record(meta)`
returns them for any megamid.json, with defaults derived from the older layout (config, state,
hf_config) for checkpoints written before the record existed. Pure: no I/O but `load_record`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from megamid.checkpoint.checkpointer import STATE_FILE, read_state, resolve
from megamid.config.base import ConfigError, fail

RECORD_VERSION = 1
KINDS = ("hf-import", "train", "branch", "average")
SPECIAL = ("bos", "eos", "pad")
RECORD_KEYS = ("record_version", "model", "tokenizer", "special_ids", "rope", "provenance")


def _model_dict(model_cfg) -> dict:
    if isinstance(model_cfg, Mapping):
        return dict(model_cfg)
    from megamid.config.loader import to_dict

    return to_dict(model_cfg)


def _token_id(value):
    """An id, a list of ids (HF allows several eos ids), or None; anything else is not an id."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value) if len(value) > 1 else value[0]
    return None


def checkpoint_record(model_cfg, tokenizer_spec: str, special_ids: Mapping[str, Any], rope: Mapping[str, Any],
                      provenance: Mapping[str, Any], generation: Optional[Mapping[str, Any]] = None) -> dict:
    """The record keys of a checkpoint's megamid.json (merge them into the dict you write).

    model_cfg: a ModelConfig or its dict; special_ids: {bos, eos, pad} (missing = None); rope: the rope
    dict the weights were trained with; provenance: {"kind": one of KINDS, "sources": [...], ...}."""
    kind = (provenance or {}).get("kind")
    if kind not in KINDS:
        fail("provenance.kind", kind, f"expected one of {', '.join(KINDS)}")
    if not isinstance(rope, Mapping) or "type" not in rope:
        fail("rope", rope, "a rope dict with a 'type' key, e.g. {type: default, theta: 10000}")
    unknown = set(special_ids or {}) - set(SPECIAL)
    if unknown:
        fail("special_ids", dict(special_ids), f"keys are {', '.join(SPECIAL)}")
    record = {"record_version": RECORD_VERSION, "model": _model_dict(model_cfg), "tokenizer": str(tokenizer_spec),
              "special_ids": {k: _token_id((special_ids or {}).get(k)) for k in SPECIAL}, "rope": dict(rope),
              "provenance": {"sources": [], **dict(provenance)}}
    if generation:
        record["generation"] = dict(generation)
    return record


def special_ids_of(tokenizer) -> dict:
    """{bos, eos, pad} of a megamid tokenizer (eod is the end-of-sequence id generation stops at)."""
    return {"bos": _token_id(getattr(tokenizer, "bos", None)), "eos": _token_id(getattr(tokenizer, "eod", None)),
            "pad": _token_id(getattr(tokenizer, "pad", None))}


def special_ids_from_hf(config: Mapping[str, Any], generation: Optional[Mapping[str, Any]] = None) -> dict:
    """{bos, eos, pad} of an HF model: generation_config.json's ids win over config.json's (Llama-3
    Instruct lists its end-of-turn id there only)."""
    out = {}
    for key in SPECIAL:
        ids = [_token_id(src.get(f"{key}_token_id")) for src in (generation or {}, config)]
        out[key] = next((i for i in ids if i is not None), None)
    return out


# ---- reading -----------------------------------------------------------------------------------
def _legacy_rope(meta: Mapping[str, Any]) -> dict:
    """The rope of the phase a pre-record training checkpoint was saved in, else config.model.rope."""
    config = meta.get("config") or {}
    phase = (meta.get("state") or {}).get("phase")
    for spec in config.get("phases") or []:
        if spec.get("name") == phase and spec.get("rope") is not None:
            return dict(spec["rope"])
    return dict(config["model"]["rope"])


def _legacy_provenance(meta: Mapping[str, Any], path: Optional[str]) -> dict:
    state, config = meta.get("state") or {}, meta.get("config") or {}
    if state.get("source") == "hf":
        return {"kind": "hf-import", "sources": [state.get("hf_dir")]}
    if "averaged_from" in state:
        return {"kind": "average", "sources": list(state["averaged_from"]), "weights": state.get("weights")}
    branch = path is not None and f"{os.sep}branches{os.sep}" in os.path.abspath(path)
    return {"kind": "branch" if branch else "train", "sources": [config["base"]] if config.get("base") else [],
            "phase": state.get("phase"), "step": meta.get("step")}


def read_record(meta: Mapping[str, Any], path: Optional[str] = None) -> dict:
    """The record of a megamid.json dict (see the module docstring); `path` names it in errors.

    Checkpoints written before the record: model/tokenizer from config, rope from the saved phase
    (config.model.rope otherwise), special ids from the HF config.json an import kept (else None:
    the loader takes them from the tokenizer), provenance from state."""
    where = f"{path}/{STATE_FILE}" if path else STATE_FILE
    if meta.get("record_version") is not None:
        if meta["record_version"] > RECORD_VERSION:
            raise ConfigError(f"{where}: record_version={meta['record_version']} is newer than this megamid reads "
                              f"({RECORD_VERSION}); upgrade megamid")
        missing = [k for k in RECORD_KEYS if k not in meta]
        if missing:
            raise ConfigError(f"{where}: record_version={meta['record_version']} but {', '.join(missing)} missing")
        return {k: meta[k] for k in RECORD_KEYS + ("generation",) if k in meta}
    config = meta.get("config") or {}
    if not config.get("model"):
        raise ConfigError(f"{where}: has neither a record (model, rope, ...) nor config.model; not a checkpoint "
                          "megamid can load")
    hf = meta.get("hf_config") or {}
    ids = special_ids_from_hf(hf) if hf.get("vocab_size") == config["model"].get("vocab_size") else {}
    return {"record_version": 0, "model": dict(config["model"]), "tokenizer": config.get("tokenizer", "byte"),
            "special_ids": {k: ids.get(k) for k in SPECIAL}, "rope": _legacy_rope(meta),
            "provenance": _legacy_provenance(meta, path)}


def load_record(path: str, _depth: int = 0) -> dict:
    """read_record of checkpoint directory `path`; where an old checkpoint lacks special ids or (a soup)
    the rope its inputs trained with, they are taken from the checkpoint it came from when that exists."""
    meta = read_state(path)
    record = read_record(meta, path)
    if record["record_version"] or _depth > 4:
        return record
    prov = record["provenance"]
    origin = prov["sources"][0] if prov["kind"] != "hf-import" and prov["sources"] else None  # base / first input
    if origin and os.path.isdir(origin):
        try:
            parent = load_record(resolve(origin), _depth + 1)
        except ConfigError:
            return record
        if prov["kind"] == "average":
            record["rope"] = parent["rope"]
        if all(v is None for v in record["special_ids"].values()) and _same_file(parent["tokenizer"], record["tokenizer"]):
            record["special_ids"] = dict(parent["special_ids"])
    return record


def _same_file(a: str, b: str) -> bool:
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


# ---- what plan / train need to know about a base -------------------------------------------------
def checkpoint_lr(meta: Mapping[str, Any]) -> Optional[float]:
    """The LR of the last step a checkpoint took (state.lr), or None (a converted base, a soup)."""
    lr = (meta.get("state") or {}).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def base_has_lr(meta: Mapping[str, Any]) -> bool:
    """Whether a first phase's `start_lr: from_checkpoint` can resolve against this base's megamid.json."""
    return checkpoint_lr(meta) is not None


def first_phase_lr_problem(phase: str, base: Optional[str], base_meta: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The problem `plan` reports (None when there is none) for a first phase whose LR schedule has
    `start_lr: from_checkpoint`: it resolves only against a base checkpoint that recorded an LR."""
    where = f"phases[{phase}].lr.start_lr='from_checkpoint'"
    if not base:
        return f"{where} is invalid: the first phase starts from random weights, which have no LR; give start_lr a number"
    if base_meta is None or not base_has_lr(base_meta):
        kind = read_record(base_meta)["provenance"]["kind"] if base_meta else "unreadable"
        return (f"{where} is invalid: the base checkpoint {base!r} ({kind}) holds no LR to start from "
                "(converted HF models and averaged checkpoints have none); give start_lr a number")
    return None


__all__ = ["KINDS", "RECORD_KEYS", "RECORD_VERSION", "base_has_lr", "checkpoint_lr", "checkpoint_record", "first_phase_lr_problem",
           "load_record", "read_record", "special_ids_from_hf", "special_ids_of"]
