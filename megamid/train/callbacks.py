"""What the phase loop calls besides training: monitoring after every step, evaluation at a phase's
evaluation points. Each gets what it needs as arguments; none reads the trainer.

    callbacks = [MonitorCallback(Monitor(...)), InLoopEval(tokenizer, out_dir=CKPT_DIR/eval, log=log)]
"""

from typing import Optional


class Callback:
    """Hooks of the phase loop (every rank calls them; each decides what rank 0 writes)."""

    def on_phase_start(self, phase, start_step: int) -> None:
        pass

    def on_step_end(self, phase, metrics: dict, elapsed_s: float, world_size: int) -> dict:
        """After an optimizer step (metrics: loss, lr, step, global_step, ...); returns the metrics to keep."""
        return metrics

    def on_eval_point(self, chunks: list, phase, step: int, global_step: int) -> Optional[dict]:
        """After step `step` of `phase` where the phase evaluates (before any save of that step)."""
        return None


class MonitorCallback(Callback):
    """Logs and records each step through a megamid.train.monitor.Monitor."""

    def __init__(self, monitor):
        self.monitor = monitor

    def on_phase_start(self, phase, start_step: int) -> None:
        self.monitor.start_phase(phase, start_step)

    def on_step_end(self, phase, metrics: dict, elapsed_s: float, world_size: int) -> dict:
        log_now = metrics["step"] % phase.training.log_interval == 0 or metrics["step"] == phase.steps
        return self.monitor.record(phase, metrics, elapsed_s, world_size, log_now)


class InLoopEval(Callback):
    """A phase's `eval:` at its end and every `interval` steps; results under OUT_DIR/<phase>/step_<N>/."""

    def __init__(self, tokenizer, out_dir: str, log=print):
        self.tokenizer, self.out_dir, self.log = tokenizer, out_dir, log
        self.results = []

    def on_eval_point(self, chunks: list, phase, step: int, global_step: int) -> Optional[dict]:
        if not phase.evaluates_at(step):
            return None
        from megamid.eval.in_loop import evaluate_model

        results = evaluate_model(chunks, self.tokenizer, phase.eval, phase.name, phase.seq_len, step, self.out_dir,
                                 default_documents=phase.data.sources[0].prefix, log=self.log,
                                 global_step=global_step, training_rope=phase.rope)
        self.results.append(results)
        return results
