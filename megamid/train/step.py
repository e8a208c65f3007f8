"""The step mechanics: model chunks and optimizer under one parallel layout, and one training step over
megatron-core's get_forward_backward_func (forward-backward, gradient finalisation, optimizer step).

Every rank reads its own micro-batches (the data is a pure function of the sample index), so there
is no data broadcast: sample i of a phase is global batch i // GBS; data-parallel rank r takes the
r-th slice of every global batch. Loss is summed per token and normalised by the global token count
(calculate_per_token_loss), which makes TP/PP/DP/micro-batch splits give the same loss.

A step whose loss or gradients are not finite is skipped (no optimizer update; every rank agrees) and
reported with its reason; under fp16 the loss scaler's own skips are reported the same way.
"""

import math
from functools import partial

import torch
import torch.distributed as dist

from megamid.optim.builder import build_optimizer, set_lr
from megamid.platform import Layout, device, init_model_parallel, set_seed
from megamid.train.monitor import GradientNoiseScale


def _loss_func(batch: dict, num_sources: int, output_tensor: torch.Tensor):
    """Loss summed over tokens (megatron divides by the global token count), plus per-source sums."""
    mask = batch["loss_mask"].float()
    per_token = output_tensor.float().reshape(mask.shape) * mask
    loss = per_token.sum()
    num_tokens = mask.sum().to(torch.int)
    by_source = torch.zeros(2, num_sources, dtype=torch.float32, device=loss.device)
    by_source[0].index_add_(0, batch["source"], per_token.detach().sum(dim=1))
    by_source[1].index_add_(0, batch["source"], mask.sum(dim=1))
    return loss, num_tokens, {"lm loss": torch.stack([loss.detach(), mask.sum().detach()]),
                              "by source": by_source}


def _forward_step(data_iterator, model, num_sources: int = 1, attention: str = "megamid"):
    from megatron.core import parallel_state as ps

    from megamid.attention import packed_seq_params

    batch = next(data_iterator)
    # packed rows (cu_seqlens): megamid's attention masks across documents (None without them)
    packed = packed_seq_params(batch, ps.get_context_parallel_world_size(), attention)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], packed_seq_params=packed)
    return output, partial(_loss_func, batch, num_sources)


def layout_of(parallel) -> Layout:
    sizes = parallel.hierarchical_context_parallel_sizes
    return Layout(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                  parallel.virtual_pipeline_model_parallel_size, parallel.context_parallel_size,
                  tuple(sizes) if sizes else None)


class StepRunner:
    """This rank's model chunks (DDP-wrapped) and optimizer for one layout, and the training step."""

    def __init__(self, model_cfg, backends):
        self.model_cfg, self.backends = model_cfg, backends
        self.chunks = self.optimizer = self.layout = self.engine = None
        self.noise_scale = GradientNoiseScale()

    # ---- set-up -------------------------------------------------------------------------------
    def build(self, phase) -> bool:
        """(Re)builds process groups and model for the phase's engine (layout, recompute, FP8) unless they
        already match; True if built. The optimizer is built separately (build_optimizer) once the phase's
        LR is known."""
        if phase.engine == self.engine:
            return False
        from megamid.model import build_gpt_chunks, wrap_ddp

        parallel = phase.parallel
        layout = layout_of(parallel)
        if layout != self.layout:
            init_model_parallel(layout)
        set_seed(phase.training.seed)
        if parallel.tp_comm_overlap:
            self._tp_comm_buffers(phase)
        chunks = build_gpt_chunks(self.model_cfg, parallel, phase.recompute, self.backends, phase.fp8)
        # the distributed optimizer's weight all-gather overlaps the next forward on CUDA (sync_params
        # completes it before anything reads the weights)
        self.chunks = wrap_ddp(chunks, parallel, phase.fp8, overlap_param_gather=None)
        self.layout, self.engine, self.fp8 = layout, phase.engine, phase.fp8
        self.optimizer = None
        return True

    def _tp_comm_buffers(self, phase) -> None:
        """TE's userbuffers, once per process, for the phase's [seq_len x micro_batch / CP, hidden] shape."""
        from megamid.model.engine_config import initialize_tp_comm_overlap

        shape = (phase.seq_len, phase.training.micro_batch_size, phase.parallel.context_parallel_size)
        if getattr(self, "_ub_shape", None) is None:
            initialize_tp_comm_overlap(self.model_cfg, phase.parallel, phase.seq_len,
                                       phase.training.micro_batch_size, fp8=phase.fp8 is not None)
            self._ub_shape = shape
        elif self._ub_shape != shape:
            from megamid.config.base import ConfigError

            raise ConfigError(f"{phase.where}.parallel.tp_comm_overlap=true is invalid here: TE's userbuffers were "
                              f"sized for (seq_len, micro_batch, CP) = {self._ub_shape} and cannot be re-sized in "
                              f"one process; this phase needs {shape}: relaunch at the phase, or turn it off")

    def sync_params(self) -> None:
        """Completes an overlapped weight all-gather (a no-op without one) before a save, an eval or a rebuild."""
        from megamid.model.engine_config import force_param_sync

        if self.chunks is not None:
            force_param_sync(self.chunks)

    def describe_rope(self) -> str:
        from megamid.model import unwrap
        from megamid.rope.fusion import describe_rope_fusion

        gpt = unwrap(self.chunks[0])
        return describe_rope_fusion(self.backends.rope_fusion, gpt.rotary_pos_emb.attention_factor)

    def describe_engine(self) -> str:
        from megamid.model import unwrap
        from megamid.model.engine_config import describe_engine

        return describe_engine(unwrap(self.chunks[0]).config, getattr(self.chunks[0], "ddp_config", None))

    def build_optimizer(self, parallel, training, peak_lr: float) -> None:
        import torch

        from megamid.model import unwrap
        from megamid.model.engine_config import optimizer_kwargs

        engine = optimizer_kwargs(parallel, self.fp8, cuda=torch.cuda.is_available(), overlap_param_gather=None)
        self.optimizer = build_optimizer(self.chunks, self.model_cfg, parallel, training, peak_lr, engine)
        config = unwrap(self.chunks[0]).config
        config.grad_scale_func = self.optimizer.scale_loss
        config.finalize_model_grads_func = self._finalize_grads
        no_sync = [c.no_sync for c in self.chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

    def set_rope(self, rope: dict) -> None:
        """Switches every chunk to `rope` (every cached cos/sin table is rebuilt)."""
        from megamid.model.builder import set_rope

        for chunk in self.chunks:
            set_rope(chunk, rope)   # a switch keeps the model's rope_fusion path

    def set_rope_length(self, seq_len: int, context_parallel: int) -> None:
        """Length-dependent scalings (dynamic NTK, LongRoPE) must see the global sequence length on every
        context-parallel rank, not the largest position of the rank's own shard."""
        from megamid.model import unwrap

        for chunk in self.chunks:
            unwrap(chunk).rope_seq_len = seq_len if context_parallel > 1 else None

    def micro_batches(self, samples, training, context_parallel: int, step: int, sequence_parallel: bool = False) -> list:
        from megatron.core import parallel_state as ps

        dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        per_rank = training.global_batch_size // dp
        start = step * training.global_batch_size + rank * per_rank
        batches = []
        for m in range(per_rank // training.micro_batch_size):
            batch = samples.get_batch(start + m * training.micro_batch_size, training.micro_batch_size)
            batch = {k: v.to(device()) for k, v in batch.items()}
            if self.backends.attention == "te" and "cu_seqlens" in batch:
                # TE masks packed documents in the thd layout and shards every document across CP itself
                from megamid.attention.thd import thd_batch

                batch, batch["packed_seq_params"] = thd_batch(
                    batch, ps.get_context_parallel_world_size(), ps.get_context_parallel_rank(),
                    ps.get_tensor_model_parallel_world_size(), sequence_parallel)
            elif context_parallel > 1:
                from megamid.attention.context_parallel import shard_batch

                batch = shard_batch(batch, ps.get_context_parallel_world_size(), ps.get_context_parallel_rank())
            batches.append(batch)
        return batches

    # ---- gradients ----------------------------------------------------------------------------
    def _grads(self):
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        for chunk in self.chunks:
            for param in chunk.parameters():
                grad = getattr(param, "main_grad", None)
                if grad is not None:
                    yield param, grad, param_is_not_tensor_parallel_duplicate(param)

    def _grad_sq_norm(self) -> float:
        """Squared norm of this rank's accumulated gradient (summed over TP/PP shards, not over DP)."""
        from megatron.core import parallel_state as ps

        total = torch.zeros(1, dtype=torch.float64, device=device())
        for _, grad, counted in self._grads():
            if counted:
                total += grad.double().pow(2).sum()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total, group=ps.get_model_parallel_group())
        return total.item()

    def _finalize_grads(self, model, num_tokens=None, **kwargs):
        """megatron's finalize_model_grads, bracketed by gradient norms for the noise-scale estimate:
        before it, this DP rank's gradient (a small batch); after it, the global batch's."""
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import finalize_model_grads

        dp = ps.get_data_parallel_world_size(with_context_parallel=True)
        measure = dp > 1 and num_tokens is not None
        if measure:
            local_tokens = float(self._local_tokens)
            small = self._grad_sq_norm() / local_tokens ** 2
        finalize_model_grads(model, num_tokens, **kwargs)
        if measure:
            big_tokens = float(num_tokens)
            big = self._grad_sq_norm()        # already divided by the global token count
            small_mean = torch.tensor([small], dtype=torch.float64, device=device())
            dist.all_reduce(small_mean, group=ps.get_data_parallel_group(with_context_parallel=True))
            self._gns = self.noise_scale.update(small_mean.item() / dp, local_tokens, big, big_tokens)

    def _nonfinite_reason(self, loss: float):
        """Why this step must not update the weights (the same answer on every rank), or None."""
        flags = torch.zeros(2, dtype=torch.float32, device=device())
        flags[0] = 0.0 if math.isfinite(loss) else 1.0
        for _, grad, _ in self._grads():
            if not bool(torch.isfinite(grad).all()):
                flags[1] = 1.0
                break
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] > 0:
            return f"non-finite loss ({loss})"
        return "non-finite gradients" if flags[1] > 0 else None

    # ---- one step -----------------------------------------------------------------------------
    def step(self, batches: list, lr: float, training, source_names: list) -> dict:
        """One optimizer step over this rank's micro-batches at LR `lr`; returns the step's metrics."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        set_lr(self.optimizer, lr, training.weight_decay)
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._local_tokens = sum(float(b["loss_mask"].sum()) for b in batches)
        self._gns = None
        iterators = [iter(batches) for _ in self.chunks]
        num_sources = len(source_names)
        losses = get_forward_backward_func()(
            forward_step_func=partial(_forward_step, num_sources=num_sources, attention=self.backends.attention),
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=len(batches),
            seq_length=training.seq_len,
            micro_batch_size=training.micro_batch_size,
            forward_only=False,
        )
        total = torch.zeros(2 + 2 * num_sources, dtype=torch.float64, device=device())
        for item in losses:
            total[:2] += item["lm loss"].to(torch.float64)
            total[2:] += item["by source"].to(torch.float64).reshape(-1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # Every last-stage rank of a TP group holds the same sums: ratios cancel the duplicates.
            dist.all_reduce(total)
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        if self.model_cfg.dtype == "fp16":
            # The loss scaler skips steps with inf/nan gradients itself (and lowers its scale).
            ok, grad_norm, _ = self.optimizer.step()
            reason = None if ok else "fp16 loss scaler found inf/nan gradients"
        else:
            # a batch whose every label is masked (loss_mask sources) has nothing to learn from
            reason = "no scored tokens in the batch" if total[1] == 0 else self._nonfinite_reason(loss)
            ok, grad_norm = False, None
            if reason is None:
                ok, grad_norm, _ = self.optimizer.step()
        sums, counts = total[2:2 + num_sources], total[2 + num_sources:]
        by_source = {name: (sums[i] / counts[i]).item() for i, name in enumerate(source_names) if counts[i] > 0}
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "skipped": not ok, "skip_reason": reason, "loss_by_source": by_source, "gns": self._gns}
