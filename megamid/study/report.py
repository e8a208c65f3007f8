"""report.md and figures of the studies (matplotlib when installed; the tables always)."""

import os
from typing import Dict, List


def _f(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min"


def extension_report(r: Dict, out: str) -> str:
    L = r["L"]
    n1, n2, n4 = str(L), str(2 * L), str(4 * L)
    base = r["base"]
    lines = [f"# Context-extension study (L={L} -> 2L={2 * L}, 4L={4 * L})", "",
             f"Base: {r['base_steps']} steps at L ({'stopped by the retrieval criterion' if r['base_stopped'] else 'reached the step cap without meeting the criterion'}); "
             f"at L: passkey {_f(base['passkey'][n1])} (chance 0.25), MQAR {_f(base['mqar'][n1])}; "
             f"code ppl@L {_f(base['ppl'][n1]['ppl_mean'], 3)}.", "",
             "Passkey: ranking of 4 candidates (chance 0.25). MQAR: teacher-forced exact match of every queried "
             "one-digit value (chance 0.1). ppl: held-out Python files, mean over the window. Zero-shot uses "
             "factor 2 at 2L and factor 4 at 4L and L (the 4L rope's cost at short context); fine-tuned is "
             f"{r['scale']['ft_steps']} steps at 4L with factor 4, every method the same data and LR.", "",
             "## Zero-shot", ""]
    header = ["method", "passkey@2L", "passkey@4L", "MQAR@2L", "MQAR@4L", "ppl@L (4x rope)", "ppl@4L"]
    rows = []
    for m in r["methods"]:
        z = r["zero_shot"][m]
        rows.append([m, _f(z["passkey"][n2]), _f(z["passkey"][n4]), _f(z["mqar"][n2]), _f(z["mqar"][n4]),
                     _f(z["ppl"][n1]["ppl_mean"], 3), _f(z["ppl"][n4]["ppl_mean"], 3)])
    lines += [_table(header, rows), "", "## After the fine-tune at 4L", ""]
    header = ["method", "passkey@L", "passkey@2L", "passkey@4L", "MQAR@L", "MQAR@2L", "MQAR@4L", "ppl@L",
              "short-ctx regression", "ppl@4L"]
    rows = []
    base_short = base["ppl"][n1]["ppl_mean"]
    for m in r["methods"]:
        t = r["fine_tuned"][m]
        reg = t["ppl"][n1]["ppl_mean"] / base_short - 1 if base_short else None
        rows.append([m, _f(t["passkey"][n1]), _f(t["passkey"][n2]), _f(t["passkey"][n4]), _f(t["mqar"][n1]),
                     _f(t["mqar"][n2]), _f(t["mqar"][n4]), _f(t["ppl"][n1]["ppl_mean"], 3),
                     "-" if reg is None else f"{100 * reg:+.1f}%", _f(t["ppl"][n4]["ppl_mean"], 3)])
    lines += [_table(header, rows), ""]
    lines += ["## Passkey accuracy by depth at 4L (fine-tuned)", ""]
    depths = list(next(iter(r["fine_tuned"].values()))["passkey_by_depth"][n4])
    lines += [_table(["method", *[f"depth {d}" for d in depths]],
                     [[m, *[_f(r["fine_tuned"][m]["passkey_by_depth"][n4][d]) for d in depths]] for m in r["methods"]]), ""]
    lines += ["## MQAR accuracy by depth of the queried pair at 4L (fine-tuned)", ""]
    bins = list(next(iter(r["fine_tuned"].values()))["mqar_by_depth"][n4])
    lines += [_table(["method", *bins], [[m, *[_f(r["fine_tuned"][m]["mqar_by_depth"][n4][b]) for b in bins]]
                                         for m in r["methods"]]), ""]
    search = r.get("longrope_search")
    if search:
        lines += ["## LongRoPE's factor search", "",
                  "Perplexity at factor x L on training-split code under each seed and under the searched factors "
                  "(megamid.study.longrope); the searched long factors are LongRoPE's rows above.", ""]
        names = list(next(iter(search.values()))["seeds"])
        lines += [_table(["factor", *[f"seed {n}" for n in names], "searched", "evaluations", "long factors"],
                         [[f"x{f}", *[_f(v["seeds"][n], 3) for n in names], _f(v["score"], 3), str(v["evaluations"]),
                           " ".join(f"{x:.2f}" for x in v["factors"])] for f, v in search.items()]), ""]
    lines += ["## Goals (issue 16)", "", _table(["goal", "result", "met"], extension_goals(r)), ""]
    figures = _extension_figures(r, out)
    lines += [f"![{name}]({os.path.basename(path)})" for name, path in figures.items()] + [""]
    lines += ["## Base retrieval checks", "",
              _table(["step", "passkey@L", "MQAR@L"], [[str(c["step"]), _f(c["passkey"]), _f(c["mqar"])]
                                                       for c in r["base_checks"]]), ""]
    return _write(lines, r, out)


def extension_goals(r: Dict) -> List[List[str]]:
    """[goal, result, met] rows, computed from the results (the report states misses, it does not hide them)."""
    L = r["L"]
    n1, n2, n4 = str(L), str(2 * L), str(4 * L)
    base, z, t = r["base"], r["zero_shot"], r["fine_tuned"]
    yes = lambda ok: "yes" if ok else "no"  # noqa: E731
    rows = [["base retrieval >= 95% at L: passkey", _f(base["passkey"][n1]), yes(base["passkey"][n1] >= 0.95)],
            ["base retrieval >= 95% at L: MQAR", _f(base["mqar"][n1]), yes(base["mqar"][n1] >= 0.95)],
            ["4L after fine-tune: YaRN >= 95%, none <= 30% (passkey)",
             f"YaRN {_f(t['yarn']['passkey'][n4])}, none {_f(t['none']['passkey'][n4])}",
             yes(t["yarn"]["passkey"][n4] >= 0.95 and t["none"]["passkey"][n4] <= 0.30)]]
    zy, zn, zp, z0 = (z[m]["passkey"][n2] for m in ("yarn", "ntk", "pi", "none"))
    rows.append(["zero-shot 2L: YaRN and NTK above PI and none (passkey)",
                 f"YaRN {_f(zy)}, NTK {_f(zn)}, PI {_f(zp)}, none {_f(z0)}", yes(min(zy, zn) > max(zp, z0))])
    short = base["ppl"][n1]["ppl_mean"]
    reg = t["yarn"]["ppl"][n1]["ppl_mean"] / short - 1
    rows.append(["YaRN short-context regression <= 2%", f"ppl@L {_f(t['yarn']['ppl'][n1]['ppl_mean'], 3)} vs base "
                 f"{_f(short, 3)} ({100 * reg:+.1f}%)", yes(reg <= 0.02)])
    return rows


def _write(lines: List[str], r: Dict, out: str) -> str:
    """Appends the time and command sections and writes OUT/report.md; returns its path."""
    lines = lines + ["## Time", "", _table(["part", "time"], [[k, _minutes(v)] for k, v in r["seconds"].items()]), "",
              "## Commands", "", "```", *r["commands"], "```", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _extension_figures(r: Dict, out: str) -> Dict[str, str]:
    plt = _plt()
    if plt is None:
        return {}
    L = r["L"]
    lengths = [L, 2 * L, 4 * L]
    paths = {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for col, (kind, title) in enumerate((("zero_shot", "zero-shot"), ("fine_tuned", "fine-tuned at 4L"))):
        for row, task in enumerate(("passkey", "mqar")):
            ax = axes[row][col]
            for m in r["methods"]:
                res = r[kind][m][task]
                xs = [n for n in lengths if str(n) in res or (n == L and kind == "zero_shot")]
                ys = [r["base"][task][str(L)] if (n == L and kind == "zero_shot") else res[str(n)] for n in xs]
                ax.plot(xs, ys, marker="o", label=m)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [str(n) for n in lengths])
            ax.set_title(f"{task} accuracy, {title}")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["accuracy vs length"] = os.path.join(out, "accuracy_vs_length.png")
    fig.savefig(paths["accuracy vs length"], dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (kind, title) in zip(axes, (("zero_shot", "zero-shot (4x rope)"), ("fine_tuned", "fine-tuned at 4L"))):
        for m in r["methods"]:
            p = r[kind][m]["ppl"][str(4 * L)]
            mids = [(a + b) / 2 for a, b in zip(p["edges"], p["edges"][1:])]
            ax.plot(mids, p["ppl"], marker=".", label=m)
        base = r["base"]["ppl"][str(4 * L)]
        ax.plot([(a + b) / 2 for a, b in zip(base["edges"], base["edges"][1:])], base["ppl"], "k--", label="base (no scaling)")
        ax.axvline(L, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"code perplexity by position at 4L={4 * L}, {title}")
        ax.set_xlabel("position")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths["perplexity vs position"] = os.path.join(out, "ppl_vs_position.png")
    fig.savefig(paths["perplexity vs position"], dpi=90)
    plt.close(fig)
    return paths


def anneal_report(r: Dict, out: str) -> str:
    lines = [f"# Annealing study (L={r['L']})", "",
             f"One stable checkpoint (step {r['stable_steps']}, constant LR after warm-up on the unfiltered mix); "
             f"from it {r['anneal_steps']} anneal steps each, as branch anneals. Cosine: a run from scratch with a "
             "cosine schedule over the same total steps and data (equal tokens). Losses are mean token NLL (nats) "
             "on held-out documents, first L tokens of each.", "",
             _table(["run", "tokens", "target-domain loss (math)", "general held-out loss (code)", "final train loss"],
                    [[name, str(v["tokens"]), _f(v["target_loss"], 4), _f(v["general_loss"], 4), _f(v["train_loss"], 4)]
                     for name, v in r["runs"].items()]), ""]
    figures = _anneal_figures(r, out)
    lines += [f"![{name}]({os.path.basename(path)})" for name, path in figures.items()] + [""]
    return _write(lines, r, out)


def _anneal_figures(r: Dict, out: str) -> Dict[str, str]:
    plt = _plt()
    if plt is None:
        return {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, curve in r["curves"].items():
        steps = [c[0] for c in curve]
        losses = [c[1] for c in curve]
        k = max(1, len(losses) // 40)  # a running mean: single-batch losses are noisy
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, label=name)
    ax.axvline(r["stable_steps"], color="grey", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.set_title("training loss: WSD decay, curated anneal, cosine")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "loss_curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"loss curves": path}
