"""The plan as `megamid plan` prints it: one row per phase (steps, tokens, seq_len, layout, rope, LR, mix)."""

from typing import Optional

from megamid.recipe.checks import describe_rope


def human(n: float) -> str:
    """1234 -> 1.2K, 3.4e9 -> 3.4B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def _lr(value: Optional[float]) -> str:
    if value is None:
        return "ckpt"
    return "0" if value == 0 else f"{value:.2e}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def describe_mix(row) -> str:
    parts = []
    for name, a in row.shares_start.items():
        b = row.shares_end[name]
        if a == 0 and b == 0:
            continue
        parts.append(f"{name} {_pct(a)}%" if abs(a - b) < 5e-4 else f"{name} {_pct(a)}->{_pct(b)}%")
    return ", ".join(parts)


def table_rows(plan) -> list:
    header = ["phase", "steps", "tokens", "seq_len", "layout", "rope", "LR first->last", "mix"]
    rows = [header]
    for r in plan.phases:
        rows.append([r.name, str(r.steps), human(r.tokens), str(r.seq_len), r.layout, describe_rope(r.rope_scaling),
                     f"{_lr(r.lr_start)}->{_lr(r.lr_end)}", describe_mix(r)])
    rows.append(["total", str(plan.total_steps), human(plan.total_tokens), "", "", "", "", ""])
    return rows


def format_table(plan) -> str:
    """The plan as an aligned text table with a heading line and notes."""
    recipe = plan.recipe
    m = recipe.model
    lines = [f"recipe {recipe.name}: {human(m.num_parameters())} parameters ({m.num_layers} layers, hidden "
             f"{m.hidden_size}, {m.num_attention_heads} heads / {m.query_groups} KV), {m.dtype}, world size "
             f"{plan.world_size}, base {recipe.base or 'none (random init)'}, tokenizer {recipe.tokenizer}"]
    rows = table_rows(plan)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {1, 2, 3}
    for k, row in enumerate(rows):
        if k == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
