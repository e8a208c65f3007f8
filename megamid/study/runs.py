"""The pieces both studies share: their scale, their data, recipes, and the training runs.

A study trains in this process (the base: megamid.train.Trainer with a callback that stops once the
model retrieves) and in `megamid train` subprocesses (branch anneals: `--from-phase P --branch LABEL`),
one CPU thread each unless told otherwise, and logs every command it runs.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import yaml


@dataclass(frozen=True)
class Scale:
    """Model, lengths and budgets of a study (`full` runs in ~20 min on 2 cores; `quick` is the test's)."""

    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    ffn_hidden_size: int = 512
    init_std: float = 0.08            # ~1/sqrt(width): with 0.02 a 2-layer model's induction heads (copy, recall)
                                      # formed only after thousands of steps; at 0.08 a copy task is learned in ~800
    length: int = 128                 # L: the base's window; extension goes to 2L and 4L
    base_batch: int = 32
    base_lr: float = 3e-3
    base_max_steps: int = 4000        # the cap of the stop criterion
    induction_steps: int = 1500       # a first phase of copy/recall documents only (a curriculum), part of the cap
    check_every: int = 100            # steps between retrieval checks of the base
    target_passkey: float = 0.95
    target_mqar: float = 0.9
    ft_steps: int = 60                # the short fine-tune at 4L (every method the same)
    ft_batch: int = 8
    ft_lr: float = 5e-4
    train_docs: int = 6000            # per task at L (exactly L tokens each)
    long_train_docs: int = 800        # per task at 4L
    code_train_docs: int = 1500
    heldout_docs: int = 32
    code_docs: int = 16
    samples: int = 8                  # passkey samples per (length, depth)
    depths: tuple = (0.0, 0.5, 1.0)
    search_docs: int = 8              # LongRoPE's factor search: training-split code documents
    search_generations: int = 4
    search_population: int = 8
    anneal_stable_steps: int = 300
    anneal_steps: int = 150
    threads: int = 1                  # per process: 2 OpenMP threads on 2 busy cores thrash
    jobs: int = 2                     # branch anneals run at once (one per core)
    base_threads: int = 2             # the base trains alone, in this process


QUICK = Scale(num_layers=1, hidden_size=32, num_attention_heads=2, ffn_hidden_size=64, base_batch=4,
              base_max_steps=4, check_every=2, ft_steps=2, ft_batch=2, train_docs=40, long_train_docs=8,
              code_train_docs=8, heldout_docs=2, code_docs=2, samples=1, depths=(0.5,), anneal_stable_steps=2,
              anneal_steps=2, threads=1, base_threads=1, induction_steps=2, search_docs=1, search_generations=1,
              search_population=4)


def model_section(scale: Scale, vocab_size: int) -> dict:
    return {"num_layers": scale.num_layers, "hidden_size": scale.hidden_size,
            "num_attention_heads": scale.num_attention_heads, "num_query_groups": scale.num_attention_heads,
            "ffn_hidden_size": scale.ffn_hidden_size, "vocab_size": vocab_size,
            "max_position_embeddings": scale.length, "rope": {"type": "default", "theta": 10000}, "dtype": "fp32",
            "init_method_std": scale.init_std}


def env(threads: int) -> dict:
    """A child's environment: its own threads, and no process-group variables of this process (which
    trains and evaluates here too: a child must pick its own rendezvous port)."""
    skip = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in skip}, "OMP_NUM_THREADS": str(threads),
            "PYTHONWARNINGS": "ignore"}


def write_yaml(path: str, data: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def megamid_train(recipe: str, args: List[str], log: Callable, threads: int, log_path: str) -> float:
    """`megamid train RECIPE ARGS` in a subprocess (output to log_path); returns its wall seconds."""
    return megamid_train_many([("run", recipe, args, log_path)], log, threads, jobs=1)["run"]


def megamid_train_many(runs: List[tuple], log: Callable, threads: int, jobs: int) -> Dict[str, float]:
    """`megamid train` for every (label, recipe, args, log_path), `jobs` subprocesses at a time (one per
    core: branch anneals are independent); returns {label: wall seconds}. The first failure stops the rest."""
    pending, running, seconds = list(runs), {}, {}
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                label, recipe, args, log_path = pending.pop(0)
                log("$ " + " ".join(["megamid", "train", recipe, *args]))
                out = open(log_path, "w")
                proc = subprocess.Popen([sys.executable, "-m", "megamid.cli", "train", recipe, *args], stdout=out,
                                        stderr=subprocess.STDOUT, env=env(threads))
                running[label] = (proc, out, time.perf_counter(), recipe, args, log_path)
            time.sleep(0.2)
            for label, (proc, out, start, recipe, args, log_path) in list(running.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del running[label]
                if proc.returncode != 0:
                    tail = open(log_path).read()[-3000:]
                    raise RuntimeError(f"megamid train {recipe} {' '.join(args)} failed ({proc.returncode}); "
                                       f"log {log_path}:\n{tail}")
                seconds[label] = time.perf_counter() - start
    finally:
        for proc, out, *_ in running.values():
            proc.kill()
            out.close()
    return seconds


def losses(ckpt_dir: str) -> List[dict]:
    """metrics.jsonl of a run or branch directory: one dict per step."""
    path = os.path.join(ckpt_dir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.isfile(path) else []


class StopWhenRetrieves:
    """Trainer callback: every `every` steps measures retrieval with `measure(model) -> dict` and, once
    `done(result)`, asks the trainer to save and stop (its exit_after_steps) after this step."""

    def __init__(self, measure: Callable, done: Callable, every: int, log: Callable):
        self.measure, self.done, self.every, self.log = measure, done, every, log
        self.trainer, self.launched, self.history = None, 0, []

    def on_phase_start(self, phase, start_step: int) -> None:
        pass

    def on_step_end(self, phase, metrics: dict, elapsed_s: float, world_size: int) -> dict:
        self.launched += 1
        return metrics

    def on_eval_point(self, chunks: list, phase, step: int, global_step: int) -> Optional[dict]:
        if step % self.every:
            return None
        from megamid.model.inference import MegatronLM

        result = self.measure(MegatronLM(chunks, max_batch=8))
        result["step"] = step
        self.history.append(result)
        self.log(f"[base] step {step}: {json.dumps({k: v for k, v in result.items() if k != 'step'})}")
        if self.done(result) and self.trainer is not None:
            self.trainer.exit_after_steps = self.launched  # the trainer saves and stops before the next step
        return result


def train_in_process(recipe_path: str, callbacks_extra: list, log: Callable) -> Dict:
    """Runs a recipe here with the monitor (metrics.jsonl) and extra callbacks; returns the trainer's result."""
    from megamid.platform import is_rank0
    from megamid.recipe import load_plan
    from megamid.train.callbacks import MonitorCallback
    from megamid.train.loop import Trainer
    from megamid.train.monitor import Monitor

    plan = load_plan(recipe_path, world_size=1)
    recipe = plan.recipe
    monitor = MonitorCallback(Monitor(recipe.checkpoint.dir, recipe.model, log, enabled=is_rank0()))
    trainer = Trainer(plan, log=log, callbacks=[monitor, *callbacks_extra])
    for cb in callbacks_extra:
        if hasattr(cb, "trainer"):
            cb.trainer = trainer
    return trainer.run()


def latest_checkpoint(ckpt_dir: str) -> str:
    from megamid.checkpoint.dist_state import find_latest

    path = find_latest(ckpt_dir, "fail")
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    return path


def scale_dict(scale: Scale) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(scale).items()}
