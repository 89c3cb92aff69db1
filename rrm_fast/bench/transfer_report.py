"""The transfer study's outputs: transfer.md (tables and what the rows say) and transfer.png.

Rendering only: every number comes from the result dict that transfer.run_transfer builds.
"""
from __future__ import annotations

from pathlib import Path

from .claims_report import secs
from .machine import describe_load

CLOCK_WORDS = {"thread": "CPU seconds of the one computing thread", "wall": "wall-clock seconds"}


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def cell(text: str) -> str:
    """Text for a markdown table cell: a '|' (a norm, ||phi||) would end the cell."""
    return text.replace("|", "\\|")


def fmt_ratio(v) -> str:
    """A ratio to the teacher; None (a teacher with 0 robust accuracy) is '-'."""
    return "-" if v is None else f"{v:.3f}"


def _intro(res: dict) -> list[str]:
    b, m = res["base"], res["machine"]
    attack = res["rows"][0]["heldout"]["attack"] if res["rows"] else "-"
    lines = ["# Transfer study: RRM variants, judged on the held-out training slice", "",
             f"Produced by `{res['command']}`: runs from {res['started']} to {res['finished']} "
             f"({res['wall_seconds'] / 60:.0f} min) on {m['summary']}; {describe_load(res['load'])} during the runs. "
             f"Rendered {res['rendered']}.", ""]
    if res["quick"]:
        lines += ["**Quick run** (`--quick`): a pipeline check on a tiny budget; its figures support nothing.", ""]
    lines += [f"Base (every row changes ONE thing): `--method {b['method']}` with its defaults (this project's variant: "
              f"per-image student delta + rel_l2), student `{b['student']}` with the teacher's head "
              f"(`--head-init {b['head_init']}`), teacher `{b['teacher']}` trained by `{b['teacher_method']}` for "
              f"{b['teacher_epochs']} epochs, {b['epochs']} student epochs, lr {b['lr']}, batch {b['batch_size']}, "
              f"schedule {b['schedule']}, --amp, L-inf eps {b['eps']:g}; training images: "
              f"{'all' if b['train_size'] is None else b['train_size']} of the training split less the "
              f"{b['monitor_size']}-image held-out slice (seed {b['seed']}).", "",
              f"Robust accuracy everywhere below: the per-sample worst case of {attack} "
              "(rrm_fast.eval.evaluate_worst_case, fp32, model in eval mode), on the held-out slice of the TRAIN split, "
              "which neither teacher nor student trained on. *ratio*: a row's robust accuracy over its own teacher's "
              "(same attacks, same images). Every choice of the defaults is made on these columns; the test split is "
              f"read for the final rows only, after. *train s*: {CLOCK_WORDS.get(res['clock'], res['clock'])} of the "
              "student's epochs (the teacher's are in its own table).", ""]
    return lines


def _teachers(res: dict) -> list[str]:
    lines = ["## Teachers", "", "| teacher | method | epochs | augment | held-out clean % | robust % | p(max) | train s |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for t in res["teachers"]:
        h = t["heldout"]
        lines.append(f"| {t['arch']} | {t['method']} | {t['epochs_run']} | {t['augment']} | {pct(h['clean'])} | "
                     f"{pct(h['robust'])} | {h['p_max']:.2f} | {secs(t['train_seconds'])} |")
    return lines + [""]


def _rows(res: dict) -> list[str]:
    default_teacher = res["teachers"][0]["checkpoint"] if res["teachers"] else None
    lines = ["## Rows (held-out training slice)", "",
             "| # | lever | row | setting | epochs | clean % | robust % | ratio | p(max) | max logit | train s | notes |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(res["rows"], 1):
        h, notes = r["heldout"], list(h_warn for h_warn in r["heldout"]["warnings"])
        if r["teacher"]["checkpoint"] != default_teacher:
            notes.append(f"teacher: {r['teacher']['method']} {r['teacher']['arch']} {r['teacher']['epochs_run']} ep")
        if r["reused"]:
            notes.append(f"reused run (load {r['run_load']['median']:g})")
        ratio = fmt_ratio(r["ratio"])
        lines.append(f"| {i} | {r['lever']} | `{r['name']}` | {cell(r['setting'])} | {r['epochs_run']} | {pct(h['clean'])} | "
                     f"**{pct(h['robust'])}** | {ratio} | {h['p_max']:.2f} | {h['max_logit']:.1f} | "
                     f"{secs(r['train_seconds'])} | {'; '.join(notes)} |")
    return lines + [""]


def _test(res: dict) -> list[str]:
    finals = [r for r in res["rows"] if "test" in r]
    if not finals:
        return []
    lines = ["## Final rows on the test split (read after every choice)", "",
             "| row | test clean % | test robust % | teacher test robust % | ratio |", "|---|---:|---:|---:|---:|"]
    teachers = {t["checkpoint"]: t for t in res["teachers"]}
    for r in finals:
        t = teachers[r["teacher"]["checkpoint"]].get("test")
        ratio = r["test"]["robust"] / t["robust"] if t and t["robust"] > 0 else None
        lines.append(f"| `{r['name']}` | {pct(r['test']['clean'])} | {pct(r['test']['robust'])} | "
                     f"{pct(t['robust'] if t else None)} | {fmt_ratio(ratio)} |")
    return lines + [f"\n({finals[0]['test']['n']} test images, {finals[0]['test']['attack']}.)", ""]


def findings(res: dict) -> list[str]:
    """What the rows say, computed from them (nothing here is written by hand)."""
    rows = {r["name"]: r for r in res["rows"]}
    out = []
    if rows:
        best = max(rows.values(), key=lambda r: r["heldout"]["robust"])
        out.append(f"Best held-out robust accuracy: `{best['name']}` ({pct(best['heldout']['robust'])} %, ratio "
                   f"{fmt_ratio(best['ratio'])} to its teacher).")
    if "default" in rows and "paper" in rows:
        d, p = rows["default"], rows["paper"]
        out.append(f"The paper's RRM keeps {fmt_ratio(p['ratio'])} of its teacher's robust accuracy; this project's default "
                   f"keeps {fmt_ratio(d['ratio'])} ({pct(p['heldout']['robust'])} % -> {pct(d['heldout']['robust'])} %), "
                   f"clean {pct(p['heldout']['clean'])} % -> {pct(d['heldout']['clean'])} %.")
    if "default" in rows and "no_teacher" in rows:
        d, n = rows["default"], rows["no_teacher"]
        gain = d["heldout"]["robust"] - n["heldout"]["robust"]
        out.append(f"Without the teacher (same per-image delta, CE alone, same epochs) the student reaches "
                   f"{pct(n['heldout']['robust'])} % robust / {pct(n['heldout']['clean'])} % clean against the "
                   f"default's {pct(d['heldout']['robust'])} % / {pct(d['heldout']['clean'])} %: the student-side "
                   f"perturbation alone gives {pct(n['heldout']['robust'])} points, and the teacher's features "
                   f"{'add' if gain >= 0 else 'cost'} {abs(100 * gain):.1f} at this budget.")
    epochs = sorted((r["epochs_run"], r["heldout"]["robust"]) for r in rows.values()
                    if r["lever"] == "student epochs" or r["name"] == "default")
    if len(epochs) > 1:
        out.append("Robust accuracy by student epochs: " + ", ".join(f"{e}: {pct(v)} %" for e, v in epochs) + ".")
    return ["## What the rows say", ""] + [f"- {line}" for line in out] + [""]


def render_markdown(res: dict) -> str:
    return "\n".join(_intro(res) + _teachers(res) + _rows(res) + _test(res) + findings(res)
                     + [f"![robust accuracy per row]({res['plot']})", ""])


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * len(rows) + 2.5), gridspec_kw={"width_ratios": [2, 1]})
    levers = list(dict.fromkeys(r["lever"] for r in rows))
    colors = {lv: plt.cm.tab20(i % 20) for i, lv in enumerate(levers)}
    ys = range(len(rows))[::-1]
    ax.barh(list(ys), [100 * r["heldout"]["robust"] for r in rows], color=[colors[r["lever"]] for r in rows])
    ax.scatter([100 * r["heldout"]["clean"] for r in rows], list(ys), marker="|", color="k", label="clean", zorder=3)
    for t in res["teachers"][:1]:
        ax.axvline(100 * t["heldout"]["robust"], color="k", ls="--", lw=0.8, label="default teacher, robust")
    ax.set_yticks(list(ys), [f"{r['name']} ({r['lever']})" for r in rows], fontsize=7)
    ax.set_xlabel("held-out accuracy (%): bars robust (worst case), ticks clean")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    series = {"this project's default (per-image delta + rel_l2)": ("o", lambda r: r["lever"] == "student epochs"
                                                                     or r["name"] == "default"),
              "the paper's RRM": ("s", lambda r: r["name"] in ("paper", "paper_2_epochs"))}
    for label, (marker, member) in series.items():
        pts = sorted((r["epochs_run"], 100 * r["heldout"]["robust"]) for r in rows if member(r))
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    for t in res["teachers"][:1]:
        ax2.axhline(100 * t["heldout"]["robust"], color="k", ls="--", lw=0.8, label="default teacher")
    ax2.set_xlabel("student epochs")
    ax2.set_ylabel("held-out robust accuracy (%)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    m = res["machine"]
    fig.suptitle(f"RRM transfer study, Fashion-MNIST, L-inf eps {res['base']['eps']:g} - {m.get('cpu', m['device'])}"
                 + (" - QUICK (no conclusions)" if res["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
