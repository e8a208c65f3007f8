"""A recipe plan drawn against cumulative tokens: LR, seq_len and each source's share of the mix.

matplotlib is optional (not a dependency): it is imported only inside plot_plan, which says how to
install it when it is missing.
"""

from megamid.config import ConfigError
from megamid.optim.schedules import lr_at
from megamid.recipe.plan import RecipePlan

MAX_POINTS_PER_PHASE = 500


def lr_curve(row) -> tuple:
    """(tokens from the phase start, LR) at up to MAX_POINTS_PER_PHASE steps of one phase; LR values
    that depend on the checkpoint's LR (start_lr: from_checkpoint) are NaN."""
    phase = row
    schedule = phase.lr
    if schedule.needs_checkpoint_lr:
        schedule = schedule.resolve(float("nan"))
    n = phase.steps
    stride = max(1, n // MAX_POINTS_PER_PHASE)
    steps = list(range(0, n, stride)) + ([n - 1] if (n - 1) % stride else [])
    return ([s * phase.tokens_per_step for s in steps], [lr_at(schedule, s, n) for s in steps])


def plot_plan(plan: RecipePlan, path: str) -> str:
    """Writes a three-panel PNG (LR, seq_len, mix shares vs cumulative tokens) to `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None

    fig, (ax_lr, ax_len, ax_mix) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    names = []
    for row in plan.phases:
        names += [n for n in row.shares_start if n not in names]
    xs, mix = [], {n: [] for n in names}
    for row in plan.phases:
        x, lr = lr_curve(row)
        ax_lr.plot([row.start_tokens + t for t in x], lr, color="C0")
        end = row.start_tokens + row.tokens
        ax_len.plot([row.start_tokens, end], [row.seq_len, row.seq_len], color="C1")
        xs += [row.start_tokens, end]
        for n in names:
            mix[n] += [row.shares_start.get(n, 0.0), row.shares_end.get(n, 0.0)]
        for ax in (ax_lr, ax_len, ax_mix):
            ax.axvline(row.start_tokens, color="0.8", linewidth=0.8)
        ax_lr.text(row.start_tokens, 1.02, f" {row.name}", transform=ax_lr.get_xaxis_transform(), fontsize=8)
    ax_mix.stackplot(xs, [mix[n] for n in names], labels=names)
    ax_lr.set_ylabel("LR")
    ax_len.set_ylabel("seq_len")
    ax_len.set_yscale("log", base=2)
    ax_mix.set_ylabel("share of tokens")
    ax_mix.set_ylim(0, 1)
    ax_mix.set_xlabel("cumulative tokens")
    ax_mix.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(f"recipe {plan.recipe.name}: {len(plan.phases)} phases")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
