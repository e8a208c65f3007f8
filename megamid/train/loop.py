"""The phase loop: runs (or resumes) every phase of a resolved plan, with saves, resume, branch anneals
and callbacks (monitoring, in-loop evaluation). The step mechanics live in megamid.train.step.

    plan = plan_recipe(load_recipe("recipe.yaml"), world_size=...)   # refuses what `megamid plan` refuses
    Trainer(plan).run()
"""

import os
import time

import torch.distributed as dist

from megamid.checkpoint import dist_state as ckpt
from megamid.checkpoint.record import checkpoint_lr, checkpoint_record, load_record, special_ids_of
from megamid.config import ConfigError, to_dict
from megamid.errors import MegamidError
from megamid.optim import lr_at
from megamid.platform import init_process_group, is_rank0
from megamid.train.callbacks import InLoopEval, MonitorCallback
from megamid.train.step import StepRunner


class NonFiniteTrainingError(MegamidError):
    """Too many consecutive steps had a non-finite loss or gradients: the run stops without saving them."""


class Trainer:
    """Runs (or resumes) every phase of `plan` (a megamid.recipe.RecipePlan) in this process group."""

    def __init__(self, plan, log=print, exit_after_steps=None, from_phase=None, branch=None, callbacks=None,
                 backends=None):
        self.plan, self.recipe, self.phases = plan, plan.recipe, plan.phases
        self.exit_after_steps = exit_after_steps   # stop (after a save) once this launch ran this many steps
        if (from_phase is None) != (branch is None):
            raise ConfigError("--from-phase and --branch go together: a branch anneal starts at a phase and "
                              "writes its own checkpoints (e.g. --from-phase anneal --branch mix-b)")
        if from_phase is not None and from_phase not in plan.names:
            raise ConfigError(f"--from-phase {from_phase!r} is invalid: the recipe's phases are {', '.join(plan.names)}")
        if branch is not None and (not branch or "/" in branch or branch.startswith(".")):
            raise ConfigError(f"--branch {branch!r} is invalid: a plain name for the branch's directory")
        self.from_phase, self.branch = from_phase, branch
        self.ckpt_dir = (os.path.join(self.recipe.checkpoint.dir, "branches", branch) if branch
                         else self.recipe.checkpoint.dir)
        init_process_group()  # before anything asks which rank this is
        world = dist.get_world_size()
        if world != plan.world_size:
            raise ConfigError(f"the plan was made for world size {plan.world_size}, but this launch has {world} "
                              f"processes; plan with --world-size {world} (or launch {plan.world_size})")
        self.log = log if is_rank0() else (lambda *a, **k: None)
        from megamid.data.tokenizer_files import load_tokenizer
        from megamid.model import resolve_backends

        self.tokenizer = load_tokenizer(self.recipe.tokenizer)
        if self.tokenizer.vocab_size > self.recipe.model.vocab_size:
            raise ConfigError(f"model.vocab_size={self.recipe.model.vocab_size} is invalid: the tokenizer "
                              f"{self.recipe.tokenizer!r} has {self.tokenizer.vocab_size} tokens")
        self.special_ids, self.generation = self._special_ids()
        self.backends = backends or resolve_backends(model=self.recipe.model)
        self.runner = StepRunner(self.recipe.model, self.backends)
        if callbacks is None:
            from megamid.train.monitor import Monitor

            self.eval = InLoopEval(self.tokenizer, os.path.join(self.ckpt_dir, "eval"), self.log)
            callbacks = [MonitorCallback(Monitor(self.ckpt_dir, self.recipe.model, self.log, enabled=is_rank0())),
                         self.eval]
        self.callbacks = list(callbacks)
        self.last_lr = None            # the LR of the last step taken
        self.phase_start_lr = None     # the LR the current phase started from
        self.last_save = None
        self.history = []              # one dict per step (rank 0 has the values)
        self.data_start = {}           # per-source stream offsets (tokens) at the start of the current phase
        self.samples = None
        self._rope = None

    @property
    def chunks(self) -> list:
        return self.runner.chunks

    @property
    def eval_results(self) -> list:
        return self.eval.results if getattr(self, "eval", None) else []

    # ---- set-up -------------------------------------------------------------------------------
    def _setup(self, phase) -> None:
        """Model for the phase's engine (layout, recompute, FP8; built when it changes) and an optimizer."""
        if self.runner.build(phase):
            self._rope = self.recipe.model.rope
            self.log(self.backends.describe(phase.parallel))
            self.log(self.runner.describe_rope())
            self.log(self.runner.describe_engine())
            self._build_optimizer(phase)

    def _build_optimizer(self, phase) -> None:
        peak = phase.lr.peak if not phase.lr.needs_checkpoint_lr else 1e-4
        self.runner.build_optimizer(phase.parallel, phase.training, peak)

    def _apply_rope(self, phase) -> None:
        if self._rope != phase.rope:
            self.runner.set_rope(phase.rope)
            self._rope = phase.rope
            self.log(f"rope: {phase.rope}")
        self.runner.set_rope_length(phase.seq_len, phase.parallel.context_parallel_size)

    def _data(self, phase, start_tokens: dict):
        from megamid.data.mixture_dataset import MixtureDataset

        return MixtureDataset(phase.data, seq_len=phase.seq_len,
                              num_samples=phase.steps * phase.training.global_batch_size,
                              eod=self.tokenizer.eod, pad=self.tokenizer.pad,
                              vocab_size=self.recipe.model.vocab_size, seed=None, start_tokens=start_tokens)

    # ---- checkpoints --------------------------------------------------------------------------
    def _state(self, phase, phase_step: int, global_step: int) -> dict:
        consumed = phase_step * phase.training.global_batch_size
        return {"phase": phase.name, "phase_index": phase.index, "phase_step": phase_step,
                "phase_steps": phase.steps, "global_step": global_step, "consumed_samples": consumed,
                "lr": self.last_lr, "phase_start_lr": self.phase_start_lr, "data_start": self.data_start,
                "data_consumed": self.samples.consumed_per_source(consumed), "rope": phase.rope,
                "backends": self.backends.to_dict(), "branch": self.branch}

    def _special_ids(self):
        """bos/eos/pad (and a generation config) for the record: the base's where it has the same tokenizer
        (a converted HF model's ids, e.g. an end-of-turn eos), else the tokenizer's own."""
        ids, generation = special_ids_of(self.tokenizer), None
        if self.recipe.base:
            base = load_record(ckpt.resolve_checkpoint(self.recipe.base, "base"))
            if base["tokenizer"] == self.recipe.tokenizer and any(v is not None for v in base["special_ids"].values()):
                ids, generation = base["special_ids"], base.get("generation")
        return ids, generation

    def _record(self, phase, global_step: int) -> dict:
        provenance = {"kind": "branch" if self.branch else "train",
                      "sources": [self.recipe.base] if self.recipe.base else [], "phase": phase.name,
                      "step": global_step}
        return checkpoint_record(self.recipe.model, self.recipe.tokenizer, self.special_ids, phase.rope, provenance,
                                 self.generation)

    def _save(self, phase, phase_step: int, global_step: int) -> str:
        c = self.recipe.checkpoint
        self.runner.sync_params()
        path = ckpt.save_checkpoint(self.ckpt_dir, global_step, self.chunks, self.runner.optimizer,
                                    self._state(phase, phase_step, global_step), to_dict(self.recipe),
                                    phase.parallel.use_distributed_optimizer, c.keep_last,
                                    record=self._record(phase, global_step))
        self.log(f"saved checkpoint {path}")
        self.last_save = (path, phase.name, phase_step)
        return path

    def _resume_point(self):
        c = self.recipe.checkpoint
        if c.load == "none":
            return None
        path = ckpt.find_latest(self.ckpt_dir, c.on_corrupt) if c.load == "auto" else c.load
        if path is None and self.branch is not None:
            return self._branch_point()
        if path is None:
            return None
        if not os.path.isdir(path):
            raise ConfigError(f"checkpoint.load={path!r} is invalid: no such checkpoint directory")
        return path, ckpt.read_state(path)["state"]

    def _branch_point(self):
        """A new branch starts from the main run's checkpoint at the end of the phase before it."""
        index = self.plan.names.index(self.from_phase)
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

    def _enter_phase(self, phase, previous, resume, start_step: int) -> None:
        """Model, optimizer, rope and LR for `phase`: resumed, carried from `previous`, or from `base`."""
        engine_changes = previous is not None and self.runner.engine is not None and previous.engine != phase.engine
        if engine_changes:
            # Rebuild under the new layout (or recompute / FP8 settings) and reload the previous phase's final
            # weights: dist_checkpointing reshards them (and the optimizer state, unless this phase resets it).
            path = self.last_save[0] if self.last_save and self.last_save[1] == previous.name else None
            if path is None:
                path = self._save(previous, previous.steps, self.global_step)
            self._setup(phase)
            ckpt.load_checkpoint(path, self.chunks, self.runner.optimizer, phase.parallel.use_distributed_optimizer,
                                 load_optimizer=phase.optimizer_state == "carry")
            self.log(f"layout changed for phase {phase.name}: reloaded {path} under {phase.parallel}")
        else:
            self._setup(phase)
            if previous is not None and phase.optimizer_state == "reset":
                self._build_optimizer(phase)
                self.log(f"phase {phase.name}: optimizer state reset")
        if resume:
            ckpt.load_checkpoint(resume[0], self.chunks, self.runner.optimizer,
                                 phase.parallel.use_distributed_optimizer,
                                 load_optimizer=not (start_step == 0 and phase.optimizer_state == "reset"))
            self.log(f"resumed from {resume[0]} (phase {phase.name}, step {start_step})")
        elif previous is None and start_step == 0 and self.recipe.base:
            base = ckpt.resolve_checkpoint(self.recipe.base, "base")
            meta = ckpt.load_checkpoint(base, self.chunks, self.runner.optimizer,
                                        phase.parallel.use_distributed_optimizer, load_optimizer=False)
            # start_lr: from_checkpoint on the first phase resolves to the base's last LR (plan checks it has one)
            self.phase_start_lr = checkpoint_lr(meta)
            self.log(f"initialised weights from base checkpoint {base}")
        self._apply_rope(phase)

    def _schedule(self, phase):
        schedule = phase.lr
        if schedule.needs_checkpoint_lr:
            if self.phase_start_lr is None:
                raise ConfigError(f"{phase.where}.lr.start_lr=from_checkpoint needs an earlier phase or a "
                                  "checkpoint with an LR to take it from; this phase starts fresh")
            schedule = schedule.resolve(self.phase_start_lr)
        return schedule

    # ---- the loop -----------------------------------------------------------------------------
    def _start_point(self, resume):
        """(phase index, step in it) to start from, restoring the resumed state."""
        self.global_step = 0
        if not resume:
            return (self.plan.names.index(self.from_phase) if self.from_phase is not None else 0), 0
        path, state = resume
        if state["phase"] not in self.plan.names:
            raise ConfigError(f"checkpoint {path} was saved in phase {state['phase']!r}, which this "
                              f"recipe does not have (phases: {', '.join(self.plan.names)})")
        start_phase, start_step = self.plan.names.index(state["phase"]), state["phase_step"]
        self.global_step = state["global_step"]
        self.data_start = state.get("data_start", {})
        self.last_lr = state.get("lr")
        # The LR this phase started from (what start_lr: from_checkpoint resolves to), kept on a mid-phase resume.
        self.phase_start_lr = state.get("phase_start_lr") if start_step > 0 else self.last_lr
        if start_step >= self.phases[start_phase].steps:
            start_phase, start_step = start_phase + 1, 0
            self.data_start = state.get("data_consumed", {})
            self.phase_start_lr = self.last_lr
        return start_phase, start_step

    def _check_skips(self, phase, metrics: dict) -> None:
        """Counts consecutive skipped steps; stops the run past training.max_consecutive_skips."""
        self._skips = self._skips + 1 if metrics["skipped"] else 0
        if metrics["skipped"]:
            self.log(f"[{phase.name}] step {metrics['step']} skipped: {metrics['skip_reason']}")
        limit = phase.training.max_consecutive_skips
        if self._skips > limit:
            latest = self.last_save[0] if self.last_save else "none from this launch"
            raise NonFiniteTrainingError(
                f"training stopped at phase {phase.name!r} step {metrics['step']}: {self._skips} consecutive steps "
                f"skipped ({metrics['skip_reason']}); training.max_consecutive_skips={limit}. Nothing non-finite "
                f"was saved (last checkpoint: {latest}); lower the LR, raise clip_grad or check the data")

    def run(self) -> dict:
        resume = self._resume_point()
        start_phase, start_step = self._start_point(resume)
        launched, self._skips = 0, 0
        world = dist.get_world_size()
        previous = self.phases[start_phase - 1] if resume and start_phase > 0 and start_step == 0 else None
        for phase in self.phases[start_phase:]:
            self._enter_phase(phase, previous, resume, start_step)
            resume = None
            samples = self.samples = self._data(phase, self.data_start)
            schedule = self._schedule(phase)
            self.log(f"phase {phase.name}: {phase.steps} steps x {phase.training.global_batch_size} samples x "
                     f"{phase.seq_len} tokens")
            for callback in self.callbacks:
                callback.on_phase_start(phase, start_step)
            for step in range(start_step, phase.steps):
                if self.exit_after_steps is not None and launched == self.exit_after_steps:
                    self._save(phase, step, self.global_step)
                    self.log(f"exiting after {launched} steps of this launch, as asked")
                    return {"global_step": self.global_step, "history": self.history, "finished": False}
                launched += 1
                t0 = time.perf_counter()
                lr = lr_at(schedule, step, phase.steps)
                batches = self.runner.micro_batches(samples, phase.training, phase.parallel.context_parallel_size, step,
                                                    phase.parallel.sequence_parallel)
                metrics = self.runner.step(batches, lr, phase.training, samples.names)
                self.last_lr = lr
                self.global_step += 1
                metrics.update(phase=phase.name, step=step + 1, global_step=self.global_step)
                elapsed = time.perf_counter() - t0
                for callback in self.callbacks:
                    metrics = callback.on_step_end(phase, metrics, elapsed, world)
                self.history.append(metrics)
                self._check_skips(phase, metrics)
                # Evaluate before saving: a run killed in between redoes the step and its evaluation.
                if phase.evaluates_at(step + 1):
                    self.runner.sync_params()
                for callback in self.callbacks:
                    callback.on_eval_point(self.chunks, phase, step + 1, self.global_step)
                final = step + 1 == phase.steps and self.recipe.checkpoint.save_final
                if final or (phase.save_interval and (step + 1) % phase.save_interval == 0):
                    self._save(phase, step + 1, self.global_step)
            self.data_start = samples.consumed_per_source(phase.steps * phase.training.global_batch_size)
            previous, start_step, self.phase_start_lr = phase, 0, self.last_lr
        return {"global_step": self.global_step, "history": self.history, "finished": True}
