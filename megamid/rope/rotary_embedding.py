"""ScaledRotaryEmbedding: Megatron-Core's RotaryEmbedding driven by a RopeScaling (every method).

GPTModel(position_embedding_type="rope") keeps calling `rotary_pos_emb(seq_len, packed_seq=, cp_group=)`
and gets megatron's freqs [s, 1, 1, rotary_dim] (angles; megatron takes cos/sin in attention).
The attention factor cannot travel in the angles: megatron's attention multiplies cos and sin by
`_yarn_get_concentration_factor_from_config(config)` (the YaRN path), so `bind_attention_factor`
writes yarn_* attributes on the TransformerConfig that make that function return our factor.

With model.rope_fusion (megamid.rope.fusion) the module serves the other paths too: "te" binds factor 1
and puts f^2 / sqrt(head_dim) in config.softmax_scale (TE's fused RoPE refuses a factor); "megamid"
returns, in place of the angles, the kernel's inputs (inv_freq and positions in one float32 tensor)
for RopeFusedSelfAttention.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor

from megamid.config.base import fail
from megamid.rope.fusion import PATHS, check_te_fold, folded_softmax_scale, pack_rope_inputs
from megamid.rope.positions import cp_shard_positions
from megamid.rope.scaling import RopeScaling

_YARN_ATTRS = ("yarn_rotary_scaling_factor", "yarn_mscale", "yarn_mscale_all_dim")


def concentration_attrs(attention_factor: float) -> dict[str, float]:
    """yarn_* config values for which megatron's `_yarn_get_concentration_factor` returns
    attention_factor: with scale e and mscale_all_dim 0 it computes 0.1 * mscale * ln(e) + 1."""
    if attention_factor == 1.0:
        return {"yarn_rotary_scaling_factor": 1.0, "yarn_mscale": 1.0, "yarn_mscale_all_dim": 1.0}
    mscale = (attention_factor - 1.0) * 10.0
    for _ in range(8):  # step by ulps until megatron's expression rounds to exactly our factor
        got = 0.1 * mscale * math.log(math.e) + 1.0
        if got == attention_factor:
            break
        mscale = math.nextafter(mscale, math.inf if got < attention_factor else -math.inf)
    return {"yarn_rotary_scaling_factor": math.e, "yarn_mscale": mscale, "yarn_mscale_all_dim": 0.0}


def bind_attention_factor(config, attention_factor: float) -> None:
    """Make megatron's attention (unfused RoPE path) scale cos and sin by attention_factor, as HF does.

    config is the TransformerConfig every layer of the model reads; call again after a scaling change."""
    for key, value in concentration_attrs(attention_factor).items():
        setattr(config, key, value)
    got = _yarn_get_concentration_factor(*(getattr(config, k) for k in _YARN_ATTRS))
    if not math.isclose(got, attention_factor, rel_tol=1e-14):
        raise AssertionError(f"megatron would apply attention factor {got}, wanted {attention_factor}")


def _device() -> torch.device:
    # megatron moves its tables to the current CUDA device on first use; without CUDA they stay on CPU
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class ScaledRotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding for any RopeScaling; swap it in with `install_rotary_embedding(gpt, rope)`.

    Tables are computed for the length being run (dynamic NTK and LongRoPE depend on it, as HF's
    max(position_ids) + 1) and cached per (length, offset, packed, cp group); `set_scaling` drops them."""

    def __init__(self, rope: RopeScaling, *, rotary_interleaved: bool = False, cp_group=None, config=None,
                 cache_size: int = 16, fusion: str = "none"):
        if fusion not in PATHS:
            fail("rope_fusion", fusion, f"one of {PATHS} (model.rope_fusion resolved by rope_fusion_path)")
        self.fusion = fusion
        super().__init__(kv_channels=rope.head_dim, rotary_percent=rope.partial_rotary_factor,
                         rotary_interleaved=rotary_interleaved, rotary_base=rope.theta,
                         use_cpu_initialization=True, cp_group=cp_group)
        self.config = config  # TransformerConfig whose yarn_* attributes carry the attention factor
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()
        self.rope = rope
        self.set_scaling(rope)

    # ---- scaling -------------------------------------------------------------------------------
    def set_scaling(self, rope: RopeScaling) -> None:
        """Switch to another scaling (a phase change): every cached table is rebuilt on next use."""
        if (rope.head_dim, rope.rotary_dim) != (self.rope.head_dim, self.rope.rotary_dim):
            fail("rope.partial_rotary_factor", rope.partial_rotary_factor,
                 f"the model rotates {self.rope.rotary_dim} of head_dim={self.rope.head_dim} channels; "
                 f"the new scaling must keep head_dim and rotary_dim (got {rope.head_dim}, {rope.rotary_dim})")
        if self.fusion == "te":
            check_te_fold(rope, "rope")
        self.rope = rope
        self.inv_freq = rope.inv_freq(None).to(_device())  # megatron's attribute, for code that reads it
        self._cache.clear()
        if self.config is not None:
            bind_attention_factor(self.config, self.rotation_factor)
            if self.fusion == "te":  # the core attentions already built take it from set_softmax_scale
                self.config.softmax_scale = folded_softmax_scale(rope.head_dim, rope.attention_factor)

    @property
    def attention_factor(self) -> float:
        return self.rope.attention_factor

    @property
    def rotation_factor(self) -> float:
        """The factor cos and sin carry: 1 where the softmax scale holds it (TE's fused path)."""
        return 1.0 if self.fusion == "te" else self.rope.attention_factor

    def _inv_freq(self, seq_len: int) -> torch.Tensor:
        return self.rope.inv_freq(seq_len).to(_device())

    def _emb(self, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Angles [*positions.shape, rotary_dim] in megatron's layout (halves or interleaved pairs)."""
        freqs = positions.to(torch.float32)[..., None] * self._inv_freq(seq_len)
        if not self.rotary_interleaved:
            return torch.cat((freqs, freqs), dim=-1)
        return torch.stack((freqs, freqs), dim=-1).flatten(-2)

    # ---- megatron's interface ------------------------------------------------------------------
    def get_freqs_non_repeated(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        positions = torch.arange(max_seq_len, device=_device(), dtype=torch.float32) + offset
        return torch.outer(positions, self._inv_freq(max_seq_len + offset))

    def get_cos_sin(self, max_seq_len: int, offset: int = 0):
        """cos, sin [s, rotary_dim // 2] for megatron's flash-decode path, which applies no mscale:
        they carry the attention factor here, as HF's do."""
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        factor = self.rotation_factor
        return torch.cos(freqs) * factor, torch.sin(freqs) * factor

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        positions = torch.arange(max_seq_len, device=_device()) + offset
        return self._emb(positions, max_seq_len + offset)[:, None, None, :]

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None) -> torch.Tensor:
        """freqs [s, 1, 1, rotary_dim]; with context parallelism (not packed) this rank's
        s / cp positions in the load-balanced layout, as megatron's get_pos_emb_on_this_cp_rank."""
        cp_group = self.cp_group if cp_group is None else cp_group
        key = (max_seq_len, offset, packed_seq, cp_group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        positions = torch.arange(max_seq_len, device=_device())
        if cp_group is not None and cp_group.size() > 1 and not packed_seq:
            # indexing positions is the same slice as megatron's, without its pinned-memory copy (no CUDA)
            positions = positions[cp_shard_positions(max_seq_len, cp_group.size(), cp_group.rank()).to(_device())]
        if self.fusion == "megamid":
            emb = pack_rope_inputs(self._inv_freq(max_seq_len + offset), positions + offset)
        else:
            emb = self._emb(positions + offset, max_seq_len + offset)[:, None, None, :]
        self._cache[key] = emb
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

    # ---- explicit positions (packed documents) -------------------------------------------------
    def freqs_for_positions(self, position_ids: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
        """freqs [s, b, 1, rotary_dim] for position_ids [b, s] (this rank's tokens, any layout).

        seq_len picks the table for dynamic NTK / LongRoPE; default max(position_ids) + 1 as HF. Under
        context parallelism pass the global one, or ranks may disagree."""
        if position_ids.dim() != 2:
            fail("position_ids", tuple(position_ids.shape), "expected [batch, seq]")
        if seq_len is None:
            seq_len = int(position_ids.max()) + 1 if position_ids.numel() else 1
        if self.fusion == "megamid":  # the kernel's inputs: inv_freq and positions [s, b]
            return pack_rope_inputs(self._inv_freq(seq_len), position_ids.to(_device()).t())
        if self.fusion == "te" and position_ids.shape[0] > 1:
            # TE's fused RoPE takes one row of angles for the whole batch
            if not bool((position_ids == position_ids[:1]).all()):
                raise NotImplementedError("TE's fused RoPE (model.rope_fusion: te) takes one row of positions for "
                                          "the whole batch; rows with their own positions (packed documents) need "
                                          "model.rope_fusion: megamid or none")
            position_ids = position_ids[:1]
        return self._emb(position_ids.to(_device()), seq_len).transpose(0, 1)[:, :, None, :].contiguous()

    def hf_cos_sin(self, position_ids: torch.Tensor, seq_len: int | None = None):
        """(cos, sin) [b, s, rotary_dim] multiplied by the attention factor, as HF's rotary module returns."""
        if seq_len is None:
            seq_len = int(position_ids.max()) + 1 if position_ids.numel() else 1
        emb = self._emb(position_ids.to(_device()), seq_len)
        factor = self.attention_factor
        return emb.cos() * factor, emb.sin() * factor


class PositionIdsRopeMixin:
    """GPTModel mixin: RoPE from the batch's position_ids (packed documents restarting at 0, bshd layout),
    which megatron's GPTModel ignores. `class Model(PositionIdsRopeMixin, GPTModel)`; switch on with
    `rope_position_ids = True`; under context parallelism set `rope_seq_len` to the global length."""

    rope_position_ids: bool = False
    rope_seq_len: int | None = None

    def _preprocess(self, *args, **kwargs):
        out = super()._preprocess(*args, **kwargs)
        position_ids = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        # out[1] is None where megatron uses no freqs (flash decode): leave those paths alone
        if self.rope_position_ids and position_ids is not None and out[1] is not None:
            freqs = self.rotary_pos_emb.freqs_for_positions(position_ids, seq_len=self.rope_seq_len)
            out = (out[0], freqs, *out[2:])
        return out


def install_rotary_embedding(gpt, rope: RopeScaling, fusion: str = "none") -> ScaledRotaryEmbedding:
    """Replace a GPTModel's rotary embedding (built with position_embedding_type="rope") by one for
    `rope`, and bind its attention factor to the model's TransformerConfig; `fusion` is the path
    megamid.rope.fusion.rope_fusion_path chose for the model."""
    if getattr(gpt, "position_embedding_type", None) != "rope":
        fail("position_embedding_type", getattr(gpt, "position_embedding_type", None), "expected 'rope'")
    kv_channels = gpt.config.kv_channels
    if kv_channels != rope.head_dim:
        fail("rope.head_dim", rope.head_dim, f"must equal the model's kv_channels={kv_channels}")
    old = getattr(gpt, "rotary_pos_emb", None)
    module = ScaledRotaryEmbedding(rope, rotary_interleaved=gpt.config.rotary_interleaved,
                                   cp_group=getattr(old, "cp_group", None), config=gpt.config, fusion=fusion)
    gpt.rotary_pos_emb = module
    gpt.rotary_pos_emb_cache.clear()  # GPTModel's own flash-decode cos/sin cache
    return module
