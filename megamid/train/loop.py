"""The training loop: phases of steps over megatron-core's get_forward_backward_func.

Every rank reads its own micro-batches (the data is a pure function of the sample index), so there
is no data broadcast: sample i of a phase is global batch i // GBS; data-parallel rank r takes the
r-th slice of every global batch. Loss is summed per token and normalised by the global token count
(calculate_per_token_loss), which makes TP/PP/DP/micro-batch splits give the same loss.
"""

import json
import os
import time
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from megamid.config import ConfigError, RecipeConfig, to_dict
from megamid.config.recipe import Phase
from megamid.optim import LRSchedule, lr_at
from megamid.optim.builder import build_optimizer, set_lr
from megamid.platform import Layout, device, init_model_parallel, is_rank0, set_seed
from megamid.train import checkpoint as ckpt


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.float().reshape(-1)
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.stack([loss.detach(), mask.sum().detach()])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss_func, batch["loss_mask"])


class Trainer:
    """Runs (or resumes) every phase of a recipe in this process group."""

    def __init__(self, recipe: RecipeConfig, log=print, exit_after_steps=None):
        self.recipe = recipe
        self.exit_after_steps = exit_after_steps   # stop (after a save) once this launch ran this many steps
        self.phases = recipe.resolved_phases()
        self.log = log if is_rank0() else (lambda *a, **k: None)
        self.history = []          # one dict per logged step (rank 0 has the values)
        self.chunks = self.optimizer = self.layout = None
        from megamid.data.tokenizer_files import load_tokenizer

        self.tokenizer = load_tokenizer(recipe.tokenizer)
        if self.tokenizer.vocab_size > recipe.model.vocab_size:
            raise ConfigError(f"model.vocab_size={recipe.model.vocab_size} is invalid: the tokenizer "
                              f"{recipe.tokenizer!r} has {self.tokenizer.vocab_size} tokens")
        self.data_start = {}       # per-source stream offsets (tokens) at the start of the current phase
        self.samples = None

    # ---- set-up -------------------------------------------------------------------------------
    def _setup_layout(self, phase: Phase) -> None:
        p = phase.parallel
        layout = Layout(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                        p.virtual_pipeline_model_parallel_size, p.context_parallel_size)
        if p.context_parallel_size > 1:
            raise ConfigError(f"parallel.context_parallel_size={p.context_parallel_size} is not supported yet: "
                              "megatron-core's context parallelism needs Transformer Engine attention")
        if layout == self.layout:
            return
        init_model_parallel(layout)
        set_seed(phase.training.seed)
        from megamid.model import build_gpt_chunks, wrap_ddp

        self.chunks = wrap_ddp(build_gpt_chunks(self.recipe.model, p, phase.training.recompute), p)
        self.layout = layout
        self._rope = self.recipe.model.rope
        self._build_optimizer(phase)

    def _build_optimizer(self, phase: Phase) -> None:
        from megatron.core.distributed import finalize_model_grads

        from megamid.model import unwrap

        schedule = LRSchedule.from_dict(phase.training.lr, f"phases[{phase.name}].lr")
        peak = schedule.peak if not schedule.needs_checkpoint_lr else 1e-4
        self.optimizer = build_optimizer(self.chunks, self.recipe.model, phase.parallel, phase.training, peak)
        config = unwrap(self.chunks[0]).config
        config.grad_scale_func = self.optimizer.scale_loss
        config.finalize_model_grads_func = finalize_model_grads
        no_sync = [c.no_sync for c in self.chunks]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

    def _apply_rope(self, phase: Phase) -> None:
        if getattr(self, "_rope", None) == phase.rope:
            return
        from megamid.model.builder import set_rope

        for chunk in self.chunks:
            set_rope(chunk, phase.rope)
        self._rope = phase.rope
        self.log(f"rope: {phase.rope}")

    def _data(self, phase: Phase, start_tokens: dict):
        from megamid.config.data import DataConfig
        from megamid.data.mixture_dataset import MixtureDataset

        return MixtureDataset(DataConfig.from_dict(phase.data), seq_len=phase.training.seq_len,
                              num_samples=phase.steps * phase.training.global_batch_size,
                              eod=self.tokenizer.eod, pad=self.tokenizer.pad,
                              vocab_size=self.recipe.model.vocab_size, seed=None, start_tokens=start_tokens)

    def _micro_batches(self, samples, phase: Phase, step: int) -> list:
        from megatron.core import parallel_state as ps

        t = phase.training
        dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        per_rank = t.global_batch_size // dp
        start = step * t.global_batch_size + rank * per_rank
        batches = []
        for m in range(per_rank // t.micro_batch_size):
            batch = samples.get_batch(start + m * t.micro_batch_size, t.micro_batch_size)
            batch = {k: v.to(device()) for k, v in batch.items()}
            if phase.parallel.context_parallel_size > 1:
                from megamid.attention.context_parallel import shard_batch

                batch = shard_batch(batch, ps.get_context_parallel_world_size(), ps.get_context_parallel_rank())
            batches.append(batch)
        return batches

    def _check_batch(self, phase: Phase) -> None:
        from megatron.core import parallel_state as ps

        t, dp = phase.training, ps.get_data_parallel_world_size()
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"training.global_batch_size={t.global_batch_size} is invalid in phase {phase.name!r}: must be "
                f"divisible by micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")

    # ---- one step -----------------------------------------------------------------------------
    def _train_step(self, phase: Phase, samples, step: int, schedule: LRSchedule) -> dict:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = phase.training
        lr = lr_at(schedule, step, phase.steps)
        set_lr(self.optimizer, lr, t.weight_decay)
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = self._micro_batches(samples, phase, step)
        iterators = [iter(batches) for _ in self.chunks]
        losses = get_forward_backward_func()(
            forward_step_func=_forward_step,
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=len(batches),
            seq_length=t.seq_len,
            micro_batch_size=t.micro_batch_size,
            forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        total = torch.zeros(2, dtype=torch.float64, device=device())
        for item in losses:
            total += item["lm loss"].to(torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # Every last-stage rank of a TP group holds the same sums: the ratio cancels duplicates.
            dist.all_reduce(total)
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "skipped": not ok}

    # ---- phases -------------------------------------------------------------------------------
    def _state(self, phase: Phase, phase_step: int, global_step: int) -> dict:
        consumed = phase_step * phase.training.global_batch_size
        return {"phase": phase.name, "phase_index": phase.index, "phase_step": phase_step,
                "global_step": global_step, "consumed_samples": consumed,
                "data_start": self.data_start, "data_consumed": self.samples.consumed_per_source(consumed)}

    def _save(self, phase: Phase, phase_step: int, global_step: int) -> None:
        c = self.recipe.checkpoint
        path = ckpt.save_checkpoint(c.dir, global_step, self.chunks, self.optimizer,
                                    self._state(phase, phase_step, global_step), to_dict(self.recipe),
                                    phase.parallel.use_distributed_optimizer, c.keep_last)
        self.log(f"saved checkpoint {path}")

    def _resume_point(self):
        c = self.recipe.checkpoint
        if c.load == "none":
            return None
        path = ckpt.find_latest(c.dir) if c.load == "auto" else c.load
        if path is None:
            return None
        if not os.path.isdir(path):
            raise ConfigError(f"checkpoint.load={path!r} is invalid: no such checkpoint directory")
        return path, ckpt.read_state(path)["state"]

    def _base_path(self) -> str:
        base = self.recipe.base
        if os.path.isfile(os.path.join(base, ckpt.LATEST)):
            return ckpt.find_latest(base)
        if not os.path.isfile(os.path.join(base, ckpt.STATE_FILE)):
            raise ConfigError(f"base={base!r} is invalid: not a megamid checkpoint (expected a directory "
                              f"with {ckpt.STATE_FILE}, or a checkpoint directory with a 'latest' pointer)")
        return base

    def run(self) -> dict:
        resume = self._resume_point()
        start_phase, start_step, global_step = 0, 0, 0
        if resume:
            state = resume[1]
            names = [p.name for p in self.phases]
            if state["phase"] not in names:
                raise ConfigError(f"checkpoint {resume[0]} was saved in phase {state['phase']!r}, which this "
                                  f"recipe does not have (phases: {', '.join(names)})")
            start_phase, start_step, global_step = names.index(state["phase"]), state["phase_step"], state["global_step"]
            self.data_start = state.get("data_start", {})
            if start_step >= self.phases[start_phase].steps:
                start_phase, start_step = start_phase + 1, 0
                self.data_start = state.get("data_consumed", {})
        launched = 0
        for phase in self.phases[start_phase:]:
            self._setup_layout(phase)
            self._check_batch(phase)
            if resume:
                ckpt.load_checkpoint(resume[0], self.chunks, self.optimizer,
                                     phase.parallel.use_distributed_optimizer)
                self.log(f"resumed from {resume[0]} (phase {phase.name}, step {start_step})")
                resume = None
            elif phase.index == 0 and start_step == 0 and self.recipe.base:
                base = self._base_path()
                ckpt.load_checkpoint(base, self.chunks, self.optimizer, phase.parallel.use_distributed_optimizer,
                                     load_optimizer=False)
                self.log(f"initialised weights from base checkpoint {base}")
            self._apply_rope(phase)
            samples = self.samples = self._data(phase, self.data_start)
            schedule = LRSchedule.from_dict(phase.training.lr, f"phases[{phase.name}].lr")
            self.log(f"phase {phase.name}: {phase.steps} steps x {phase.training.global_batch_size} samples x "
                     f"{phase.training.seq_len} tokens")
            for step in range(start_step, phase.steps):
                if self.exit_after_steps is not None and launched == self.exit_after_steps:
                    self._save(phase, step, global_step)
                    self.log(f"exiting after {launched} steps of this launch, as asked")
                    return {"global_step": global_step, "history": self.history, "finished": False}
                launched += 1
                t0 = time.perf_counter()
                metrics = self._train_step(phase, samples, step, schedule)
                elapsed = time.perf_counter() - t0
                global_step += 1
                metrics.update(phase=phase.name, step=step + 1, global_step=global_step,
                               tokens_per_s=phase.tokens_per_step / elapsed)
                self.history.append(metrics)
                if (step + 1) % phase.training.log_interval == 0 or step + 1 == phase.steps:
                    gn = metrics["grad_norm"]
                    self.log(f"[{phase.name}] step {step + 1}/{phase.steps} | loss {metrics['loss']:.4f} | "
                             f"lr {metrics['lr']:.3e} | grad_norm {gn if gn is None else f'{gn:.3f}'} | "
                             f"tokens/s {metrics['tokens_per_s']:.0f}")
                    self._write_metrics(metrics)
                final = step + 1 == phase.steps and self.recipe.checkpoint.save_final
                if final or (phase.save_interval and (step + 1) % phase.save_interval == 0):
                    self._save(phase, step + 1, global_step)
                if phase.eval and (step + 1 == phase.steps or (phase.eval.get("interval")
                                                               and (step + 1) % phase.eval["interval"] == 0)):
                    from megamid.eval.in_loop import evaluate_phase

                    evaluate_phase(self, phase, step + 1)
            self.data_start = samples.consumed_per_source(phase.steps * phase.training.global_batch_size)
            start_step = 0
        return {"global_step": global_step, "history": self.history, "finished": True}

    def _write_metrics(self, metrics: dict) -> None:
        if not is_rank0():
            return
        os.makedirs(self.recipe.checkpoint.dir, exist_ok=True)
        with open(os.path.join(self.recipe.checkpoint.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
