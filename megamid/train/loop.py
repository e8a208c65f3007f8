"""The training loop: phases of steps over megatron-core's get_forward_backward_func.

Every rank reads its own micro-batches (the data is a pure function of the sample index), so there
is no data broadcast: sample i of a phase is global batch i // GBS; data-parallel rank r takes the
r-th slice of every global batch. Loss is summed per token and normalised by the global token count
(calculate_per_token_loss), which makes TP/PP/DP/micro-batch splits give the same loss.
"""

import os
import time
from functools import partial

import torch
import torch.distributed as dist

from megamid.config import ConfigError, RecipeConfig, to_dict
from megamid.config.recipe import Phase
from megamid.optim import LRSchedule, lr_at
from megamid.optim.builder import build_optimizer, set_lr
from megamid.platform import Layout, device, init_model_parallel, init_process_group, is_rank0, set_seed
from megamid.train import checkpoint as ckpt


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


def _forward_step(data_iterator, model, num_sources: int = 1):
    from megatron.core import parallel_state as ps

    from megamid.attention import packed_seq_params

    batch = next(data_iterator)
    # packed rows (cu_seqlens): megamid's attention masks across documents (None without them)
    packed = packed_seq_params(batch, ps.get_context_parallel_world_size())
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"], packed_seq_params=packed)
    return output, partial(_loss_func, batch, num_sources)


class Trainer:
    """Runs (or resumes) every phase of a recipe in this process group."""

    def __init__(self, recipe: RecipeConfig, log=print, exit_after_steps=None, from_phase=None, branch=None):
        self.recipe = recipe
        self.exit_after_steps = exit_after_steps   # stop (after a save) once this launch ran this many steps
        names = [p.name for p in recipe.resolved_phases()]
        if (from_phase is None) != (branch is None):
            raise ConfigError("--from-phase and --branch go together: a branch anneal starts at a phase and "
                              "writes its own checkpoints (e.g. --from-phase anneal --branch mix-b)")
        if from_phase is not None and from_phase not in names:
            raise ConfigError(f"--from-phase {from_phase!r} is invalid: the recipe's phases are {', '.join(names)}")
        if branch is not None and (not branch or "/" in branch or branch.startswith(".")):
            raise ConfigError(f"--branch {branch!r} is invalid: a plain name for the branch's directory")
        self.from_phase, self.branch = from_phase, branch
        self.ckpt_dir = (os.path.join(recipe.checkpoint.dir, "branches", branch) if branch else recipe.checkpoint.dir)
        self.last_lr = None            # the LR of the last step taken
        self.phase_start_lr = None     # the LR the current phase started from
        self.last_save = None
        self.phases = recipe.resolved_phases()
        init_process_group()  # before anything asks which rank this is
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
        from megamid.train.monitor import GradientNoiseScale, Monitor

        self.monitor = Monitor(self.ckpt_dir, recipe.model, self.log, enabled=is_rank0())
        self.noise_scale = GradientNoiseScale()

    # ---- set-up -------------------------------------------------------------------------------
    def _setup_layout(self, phase: Phase) -> None:
        p = phase.parallel
        layout = Layout(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                        p.virtual_pipeline_model_parallel_size, p.context_parallel_size)
        if layout == self.layout:
            return
        init_model_parallel(layout)
        set_seed(phase.training.seed)
        from megamid.model import build_gpt_chunks, wrap_ddp

        self.chunks = wrap_ddp(build_gpt_chunks(self.recipe.model, p, phase.training.recompute), p)
        self.layout = layout
        self._rope = self.recipe.model.rope
        from megamid.attention import describe_attention
        from megamid.model import unwrap
        from megamid.rope.fusion import describe_rope_fusion

        self.log(describe_attention(p))
        gpt = unwrap(self.chunks[0])
        self.log(describe_rope_fusion(gpt.rope_fusion, gpt.rotary_pos_emb.attention_factor))
        self._build_optimizer(phase)

    def _build_optimizer(self, phase: Phase) -> None:
        from megamid.model import unwrap

        schedule = LRSchedule.from_dict(phase.training.lr, f"phases[{phase.name}].lr")
        peak = schedule.peak if not schedule.needs_checkpoint_lr else 1e-4
        self.optimizer = build_optimizer(self.chunks, self.recipe.model, phase.parallel, phase.training, peak)
        config = unwrap(self.chunks[0]).config
        config.grad_scale_func = self.optimizer.scale_loss
        config.finalize_model_grads_func = self._finalize_grads
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

    def _set_rope_length(self, phase: Phase) -> None:
        """Length-dependent scalings (dynamic NTK, LongRoPE) must see the global sequence length on every
        context-parallel rank, not the largest position of the rank's own shard."""
        from megamid.model import unwrap

        for chunk in self.chunks:
            unwrap(chunk).rope_seq_len = phase.training.seq_len if phase.parallel.context_parallel_size > 1 else None

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
    def _grad_sq_norm(self) -> float:
        """Squared norm of this rank's accumulated gradient (summed over TP/PP shards, not over DP)."""
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        total = torch.zeros(1, dtype=torch.float64, device=device())
        for chunk in self.chunks:
            for param in chunk.parameters():
                grad = getattr(param, "main_grad", None)
                if grad is not None and param_is_not_tensor_parallel_duplicate(param):
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

    def _train_step(self, phase: Phase, samples, step: int, schedule: LRSchedule) -> dict:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = phase.training
        lr = lr_at(schedule, step, phase.steps)
        set_lr(self.optimizer, lr, t.weight_decay)
        for c in self.chunks:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = self._micro_batches(samples, phase, step)
        self._local_tokens = sum(float(b["loss_mask"].sum()) for b in batches)
        self._gns = None
        iterators = [iter(batches) for _ in self.chunks]
        num_sources = len(samples.names)
        losses = get_forward_backward_func()(
            forward_step_func=partial(_forward_step, num_sources=num_sources),
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=len(batches),
            seq_length=t.seq_len,
            micro_batch_size=t.micro_batch_size,
            forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        total = torch.zeros(2 + 2 * num_sources, dtype=torch.float64, device=device())
        for item in losses:
            total[:2] += item["lm loss"].to(torch.float64)
            total[2:] += item["by source"].to(torch.float64).reshape(-1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # Every last-stage rank of a TP group holds the same sums: ratios cancel the duplicates.
            dist.all_reduce(total)
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        sums, counts = total[2:2 + num_sources], total[2 + num_sources:]
        by_source = {name: (sums[i] / counts[i]).item() for i, name in enumerate(samples.names) if counts[i] > 0}
        self.last_lr = lr
        return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "skipped": not ok, "loss_by_source": by_source, "gns": self._gns}

    # ---- phases -------------------------------------------------------------------------------
    def _state(self, phase: Phase, phase_step: int, global_step: int) -> dict:
        consumed = phase_step * phase.training.global_batch_size
        return {"phase": phase.name, "phase_index": phase.index, "phase_step": phase_step,
                "phase_steps": phase.steps, "global_step": global_step, "consumed_samples": consumed,
                "lr": self.last_lr, "phase_start_lr": self.phase_start_lr, "data_start": self.data_start,
                "data_consumed": self.samples.consumed_per_source(consumed)}

    def _save(self, phase: Phase, phase_step: int, global_step: int) -> str:
        c = self.recipe.checkpoint
        path = ckpt.save_checkpoint(self.ckpt_dir, global_step, self.chunks, self.optimizer,
                                    self._state(phase, phase_step, global_step), to_dict(self.recipe),
                                    phase.parallel.use_distributed_optimizer, c.keep_last)
        self.log(f"saved checkpoint {path}")
        self.last_save = (path, phase.name, phase_step)
        return path

    def _resume_point(self):
        c = self.recipe.checkpoint
        if c.load == "none":
            return None
        path = ckpt.find_latest(self.ckpt_dir) if c.load == "auto" else c.load
        if path is None and self.branch is not None:
            return self._branch_point()
        if path is None:
            return None
        if not os.path.isdir(path):
            raise ConfigError(f"checkpoint.load={path!r} is invalid: no such checkpoint directory")
        return path, ckpt.read_state(path)["state"]

    def _branch_point(self):
        """A new branch starts from the main run's checkpoint at the end of the phase before it."""
        names = [p.name for p in self.phases]
        index = names.index(self.from_phase)
        if index == 0:
            return None           # the first phase starts from `base`, like the main run
        previous = self.phases[index - 1]
        path = ckpt.find_phase_end(self.recipe.checkpoint.dir, previous.name, previous.steps)
        if path is None:
            raise ConfigError(f"--from-phase {self.from_phase}: no checkpoint at the end of phase "
                              f"{previous.name!r} in {self.recipe.checkpoint.dir} (run the main recipe through "
                              f"that phase first, with checkpoint.save_final: true)")
        self.log(f"branch {self.branch!r} starts from {path}")
        return path, ckpt.read_state(path)["state"]

    def _enter_phase(self, phase: Phase, previous, resume, start_step: int) -> None:
        """Model, optimizer, rope and LR for `phase`: resumed, carried from `previous`, or from `base`."""
        layout_changes = previous is not None and self.layout is not None and previous.parallel != phase.parallel
        if layout_changes:
            # Rebuild under the new layout and reload the previous phase's final weights: dist_checkpointing
            # reshards them (and the optimizer state, unless this phase resets it).
            path = self.last_save[0] if self.last_save and self.last_save[1] == previous.name else None
            if path is None:
                path = self._save(previous, previous.steps, self.global_step)
            self.layout = None
            self._setup_layout(phase)
            ckpt.load_checkpoint(path, self.chunks, self.optimizer, phase.parallel.use_distributed_optimizer,
                                 load_optimizer=phase.optimizer_state == "carry")
            self.log(f"layout changed for phase {phase.name}: reloaded {path} under {phase.parallel}")
        else:
            self._setup_layout(phase)
            if previous is not None and phase.optimizer_state == "reset":
                self._build_optimizer(phase)
                self.log(f"phase {phase.name}: optimizer state reset")
        self._check_batch(phase)
        if resume:
            ckpt.load_checkpoint(resume[0], self.chunks, self.optimizer, phase.parallel.use_distributed_optimizer,
                                 load_optimizer=not (start_step == 0 and phase.optimizer_state == "reset"))
            self.log(f"resumed from {resume[0]} (phase {phase.name}, step {start_step})")
        elif previous is None and start_step == 0 and self.recipe.base:
            base = ckpt.resolve_checkpoint(self.recipe.base, "base")
            ckpt.load_checkpoint(base, self.chunks, self.optimizer, phase.parallel.use_distributed_optimizer,
                                 load_optimizer=False)
            self.log(f"initialised weights from base checkpoint {base}")
        self._apply_rope(phase)
        self._set_rope_length(phase)

    def _schedule(self, phase: Phase) -> LRSchedule:
        schedule = LRSchedule.from_dict(phase.training.lr, f"phases[{phase.name}].lr")
        if schedule.needs_checkpoint_lr:
            if self.phase_start_lr is None:
                raise ConfigError(f"phases[{phase.name}].lr.start_lr=from_checkpoint needs an earlier phase or a "
                                  "resumed checkpoint to take the LR from; this phase starts fresh")
            schedule = schedule.resolve(self.phase_start_lr)
        return schedule

    def run(self) -> dict:
        resume = self._resume_point()
        start_phase, start_step, self.global_step = 0, 0, 0
        if self.from_phase is not None and not resume:
            start_phase = [p.name for p in self.phases].index(self.from_phase)
        if resume:
            state = resume[1]
            names = [p.name for p in self.phases]
            if state["phase"] not in names:
                raise ConfigError(f"checkpoint {resume[0]} was saved in phase {state['phase']!r}, which this "
                                  f"recipe does not have (phases: {', '.join(names)})")
            start_phase, start_step, self.global_step = names.index(state["phase"]), state["phase_step"], state["global_step"]
            self.data_start = state.get("data_start", {})
            self.last_lr = state.get("lr")
            # The LR this phase started from (what start_lr: from_checkpoint resolves to), kept on a mid-phase resume.
            self.phase_start_lr = state.get("phase_start_lr") if start_step > 0 else self.last_lr
            if start_step >= self.phases[start_phase].steps:
                start_phase, start_step = start_phase + 1, 0
                self.data_start = state.get("data_consumed", {})
                self.phase_start_lr = self.last_lr
        launched = 0
        previous = self.phases[start_phase - 1] if resume and start_phase > 0 and start_step == 0 else None
        for phase in self.phases[start_phase:]:
            self._enter_phase(phase, previous, resume, start_step)
            resume = None
            samples = self.samples = self._data(phase, self.data_start)
            schedule = self._schedule(phase)
            self.log(f"phase {phase.name}: {phase.steps} steps x {phase.training.global_batch_size} samples x "
                     f"{phase.training.seq_len} tokens")
            self.monitor.start_phase(phase, start_step)
            for step in range(start_step, phase.steps):
                if self.exit_after_steps is not None and launched == self.exit_after_steps:
                    self._save(phase, step, self.global_step)
                    self.log(f"exiting after {launched} steps of this launch, as asked")
                    return {"global_step": self.global_step, "history": self.history, "finished": False}
                launched += 1
                t0 = time.perf_counter()
                metrics = self._train_step(phase, samples, step, schedule)
                self.global_step += 1
                metrics.update(phase=phase.name, step=step + 1, global_step=self.global_step)
                log_now = (step + 1) % phase.training.log_interval == 0 or step + 1 == phase.steps
                metrics = self.monitor.record(phase, metrics, time.perf_counter() - t0,
                                              dist.get_world_size() if dist.is_initialized() else 1, log_now)
                self.history.append(metrics)
                # Evaluate before saving: a run killed in between redoes the step and its evaluation.
                if phase.eval and (step + 1 == phase.steps or (phase.eval.get("interval")
                                                               and (step + 1) % phase.eval["interval"] == 0)):
                    from megamid.eval.in_loop import evaluate_phase

                    evaluate_phase(self, phase, step + 1)
                final = step + 1 == phase.steps and self.recipe.checkpoint.save_final
                if final or (phase.save_interval and (step + 1) % phase.save_interval == 0):
                    self._save(phase, step + 1, self.global_step)
            self.data_start = samples.consumed_per_source(phase.steps * phase.training.global_batch_size)
            previous, start_step, self.phase_start_lr = phase, 0, self.last_lr
        return {"global_step": self.global_step, "history": self.history, "finished": True}
