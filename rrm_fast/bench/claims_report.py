"""The claims harness's outputs: claims.md (tables and verdicts) and claims.png (the curves).

Rendering only: every number comes from the result dict that claims.run_claims builds.
"""
from __future__ import annotations

from pathlib import Path

from .machine import describe_load, load_verdict
from .robust_figures import (CE_ONLY_NOTE, attack_name, ce_only, curve_attack, standard_cell, standard_heading,
                             standard_sentence, warning_lines)

METHOD_LABELS = {"pgd_at": "PGD-AT", "fast_at": "Fast AT", "free_at": "Free AT", "rrm": "RRM", "natural": "natural",
                 "rslad": "RSLAD", "kdiga": "KDIGA", "ard": "ARD", "kd": "KD", "trades": "TRADES"}

CLOCK_TEXT = {
    "thread": "timed as the CPU seconds of the one computing thread (1 torch thread): the wall time of the epoch on this "
              "machine with nothing else running, which the other jobs' load cannot inflate (they still share caches "
              "and memory bandwidth)",
    "wall": "timed by the wall clock (synchronised)"}
CLOCK_AXIS = {"thread": "training time (s): epochs only, CPU time of the one computing thread",
              "wall": "training wall-clock time (s), epochs only"}
CLOCK_TEXT["cpu"], CLOCK_AXIS["cpu"] = CLOCK_TEXT["thread"], CLOCK_AXIS["thread"]  # "cpu": the thread clock's old name

COLORS = {"pgd_at": "tab:red", "fast_at": "tab:orange", "free_at": "tab:purple", "rrm": "tab:blue",
          "natural": "tab:gray", "rslad": "tab:green", "kdiga": "tab:olive", "ard": "tab:cyan", "kd": "tab:pink",
          "trades": "tab:brown"}


def label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def fmt_s(v) -> str:
    return "never" if v is None else secs(v)


def secs(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def ratio_s(v) -> str:
    return "n/a (baseline 0)" if v is None else f"{v:.3f}"


def _tests(res: dict, key: str = "test", rows=None) -> list:
    """The test results (``key``: "test" or "test_standard") of the teacher and the rows."""
    rows = res["rows"] if rows is None else rows
    return [t[key] for t in ([res["teacher"]] if res["teacher"] else []) if t.get(key)] + \
        [r.get(key) for r in rows.values()]


def monitor_attack(res: dict) -> str:
    """The held-out curves' attack, from the metrics rows (older results: from the settings)."""
    curves = [r["curve"] for r in res["rows"].values()] + ([res["teacher"]["curve"]] if res["teacher"] else [])
    return curve_attack(curves, res["settings"].get("monitor_attack"))


def in_method_order(res: dict) -> dict:
    """``res`` with its row dicts back in the harness's order: the JSON file sorts keys, so a
    result read back lists its methods alphabetically; ``method_order`` keeps the table's."""
    def ordered(d: dict) -> dict:
        if "rows" in d and d.get("method_order"):
            d = {**d, "rows": {n: d["rows"][n] for n in d["method_order"] if n in d["rows"]} | d["rows"]}
        return d
    res = ordered(res)
    return {**res, "equal_time": ordered(res["equal_time"])} if "equal_time" in res else res


def render_markdown(res: dict) -> str:
    res = in_method_order(res)
    equal_time = _equal_time(res) if "equal_time" in res else []
    return "\n".join(_intro(res) + _results(res) + _claims(res["claims"], attack_name(_tests(res))) + equal_time + _curves(res)) + "\n"


def _equal_time(res: dict) -> list[str]:
    et, t = res["equal_time"], res["teacher"]
    lines = ["## Equal training time", ""] + [f"- {n}" for n in et.get("notes", [])]
    if "rows" not in et:
        return lines + [""]
    cl = et["claims"]
    lines += [f"Every method trains for the same budget: {secs(et['budget_s'])} s ({et['budget_source']}), each with its "
              "own schedule stretched over the epochs planned from its equal-epoch run's median epoch time, stopped at "
              f"the epoch end after which another epoch would pass the budget by more than {et['tolerance']:.0%} "
              "(rrm_fast.bench.claims_budget). Test figures: the final model at the budget, on the test split as above. "
              + (f"Target: {100 * cl['target']:.1f} % held-out robust accuracy (0.9 x {label(res['claims']['reference'])}'s "
                 "final). " if "target" in cl else "") + "Times to the target are read at epoch ends (upper bounds).", "",
              "| method | epochs planned / run | s per epoch (calibration) | spent s | held-out robust % | test clean % | "
              f"test robust % ({attack_name(_tests(res, rows=et['rows']))}) | "
              f"{standard_heading(_tests(res, 'test_standard', et['rows']))} | time to target s | with teacher s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in et["rows"].items():
        cal = "-" if r["calibration_epoch_s"] is None else secs(r["calibration_epoch_s"])
        lines.append(f"| {label(name)} | {r['planned_epochs']} / {r['epochs_run']} | {cal} | {secs(r['train_seconds'])} | "
                     f"{100 * r['curve'][-1]['robust']:.1f} | {100 * r['test_clean']:.2f} | {100 * r['test_robust']:.2f} | "
                     f"{standard_cell(r.get('test_standard'))} | {fmt_s(r.get('time_to_target'))} | "
                     f"{fmt_s(r.get('time_to_target_with_teacher')) if r['uses_teacher'] else '-'} |")
    lines += [""] + warning_lines([(label(n), r.get("test")) for n, r in et["rows"].items()])
    if t:
        lines.append(f"The teacher's {secs(t['train_seconds'])} s are not in the students' budget (teacher excluded).")
    lines += ["", "| claim (equal time) | RRM | baseline | ratio | verdict |", "|---|---:|---:|---:|---|"]
    for c in cl.get("claims", []):
        if "rrm_seconds" in c:
            nums = f"{fmt_s(c['rrm_seconds'])} s | {secs(c['reference_seconds'])} s"
        else:
            nums = f"{100 * c['rrm']:.2f} % | {100 * c['baseline']:.2f} %"
        lines.append(f"| {c['statement']} | {nums} | {ratio_s(c['ratio'])} | "
                     f"{'holds' if c['holds'] else '**DOES NOT HOLD**'} |")
    lines += [f"- {n}" for n in cl.get("notes", [])]
    return lines + ["", "![robust accuracy against training time at equal time](claims_equal_time.png)", ""]


def _intro(res: dict) -> list[str]:
    s, m, t = res["settings"], res["machine"], res["teacher"]
    lines = [f"# Claims: robust accuracy against training time ({s['dataset']}, {m['device']})", "",
             f"Produced by `{res['command']}`: runs from {res['started']} to {res['finished']} "
             f"({res['wall_seconds'] / 60:.1f} min), on {m['summary']}; {describe_load(res['load'])} during the runs "
             f"(median of the runs' medians). {load_verdict(res['load'], m.get('torch_threads', 1))}; "
             "all methods ran in the same session, so the ratios compare like with like."
             + (f" Rendered {res['rendered']}, reusing the finished runs of an earlier invocation "
                f"({', '.join(res['reused_runs'])}) with their own times." if res["reused_runs"] else ""), ""]
    if res["quick"]:
        lines += ["**Quick run** (`--quick`): a pipeline check on a tiny budget; its figures support no claim.", ""]
    lines += [f"Setup: student `{s['student']}` for every method, {s['train_size']} training images "
              f"(+{s['monitor_size']} held out from the training split for the curves), batch {s['batch_size']}, "
              f"{s['epochs']} epoch(s) (Free AT: {s['epochs']} / {s['free_at_replays']} replays, rounded, at least 1), "
              f"SGD lr {s['lr']} momentum {s['momentum']} wd {s['weight_decay']}, cosine schedule (cyclic for Fast AT), "
              f"fp32, channels_last. L-inf eps = {s['eps']:g}; training PGD {s['attack_steps']} steps of {s['alpha']:g}. "
              + (f"Teacher: `{t['arch']}` trained by `{t['method']}` for {t['epochs_run']} epoch(s) on the same images"
                 f"{'' if t['trained_in_this_session'] else ' (reused from the cache, trained in an earlier session)'}; "
                 "RRM's student starts with the teacher's head (the demo's setting)." if t else "")
              + " RRM is `--method rrm`'s defaults: this project's variant (per-image student delta + rel_l2, "
              "docs/transfer.md), not the paper's RRM.", "",
              f"Curves: clean and robust accuracy under {monitor_attack(res)} on the held-out training slice at "
              f"each epoch end, against cumulative training seconds (epochs only: no monitoring, no evaluation), "
              f"{CLOCK_TEXT[s['clock']]}. Final figures: clean and robust accuracy under {attack_name(_tests(res))}"
              + (f" (`--eval-attacks {s['eval_attacks']}`; \"worst of\": a sample counts as robust only if every "
                 "attack fails on it)" if "eval_attacks" in s else "")
              + f" on the first {s['test_size']} images of the test split, every final model and the teacher alike "
              "(attacks named from the runs' reports); nothing is selected on the test split. "
              + standard_sentence(_tests(res, "test_standard"), s["test_size"]), ""]
    monitor_ce = s.get("monitor_attacks", "pgd-ce") == "pgd-ce"
    what = [w for w, bad in (("the test figures", ce_only(_tests(res))), ("the held-out curves", monitor_ce)) if bad]
    if what:
        lines += [CE_ONLY_NOTE.format(what=" and ".join(what).capitalize())
                  + (" These results predate that default." if "eval_attacks" not in s else ""), ""]
    return lines


def _results(res: dict) -> list[str]:
    s, t = res["settings"], res["teacher"]
    lines = ["## Results", "",
              "| method | teacher s | student s | run wall s | load | epochs | final held-out clean % | "
              f"final held-out robust % | test clean % | test robust % ({attack_name(_tests(res))}) | "
              f"{standard_heading(_tests(res, 'test_standard'))} | time to target s | with teacher s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if t:
        lines.append(f"| teacher ({t['method']} {t['arch']}) | {secs(t['train_seconds'])} | - | - | - | {t['epochs_run']} | "
                     f"{100 * t['curve'][-1]['clean']:.1f} | {100 * t['curve'][-1]['robust']:.1f} | "
                     f"{100 * t['test']['clean_acc']:.2f} | {100 * t['test']['robust_acc']:.2f} | "
                     f"{standard_cell(t.get('test_standard'))} | - | - |")
    for name, r in res["rows"].items():
        # mark reuse per row only when this report mixes runs of different invocations
        note = " (reused run)" if r["reused"] and len(res["reused_runs"]) < len(res["rows"]) else ""
        t_s = secs(t["train_seconds"]) if r["uses_teacher"] and t else "-"
        lines.append(f"| {label(name)}{note} | {t_s} | "
                     f"{secs(r['train_seconds'])} | {r['wall_seconds']:.0f} | {r['run_load']['median']:g} | {r['epochs_run']} | "
                     f"{100 * r['curve'][-1]['clean']:.1f} | {100 * r['curve'][-1]['robust']:.1f} | "
                     f"{100 * r['test_clean']:.2f} | {100 * r['test_robust']:.2f} | {standard_cell(r.get('test_standard'))} | "
                     f"{fmt_s(r.get('time_to_target'))} | "
                     f"{fmt_s(r.get('time_to_target_with_teacher')) if r['uses_teacher'] else '-'} |")
    for name, r in res["rows"].items():
        if r["stopped_early"]:
            lines.append(f"\n{label(name)}: {r['stopped_early']} (held-out training slice).")
    lines += [""] + warning_lines([("teacher", t and t["test"])] + [(label(n), r["test"]) for n, r in res["rows"].items()])
    lines += ["", f"*teacher s*, *student s*: training seconds ({s['clock']} clock). "
              "*run wall s* (wall clock) includes the per-epoch monitoring and the final test evaluation (and, for the first "
              "run with a teacher, training that teacher). *load*: median 1-min load average during that run (runs "
              "with a teacher ran first). *time to target* is read at epoch ends: an upper bound.", ""]
    return lines


def _claims(cl: dict, attack: str) -> list[str]:
    lines = ["## Claims", ""]
    if "target" in cl:
        lines += [f"Target for the time-to-target claims: {100 * cl['target']:.1f} % held-out robust accuracy = "
                  f"{cl['target_definition']}.", ""]
    lines += [f"- {n}" for n in cl["notes"]]
    if "transfer" in cl:
        tr = cl["transfer"]
        ref_label = label(cl["reference"])
        vs_ref = ("" if tr["teacher_vs_reference"] is None else
                  f"; the teacher itself has {tr['teacher_vs_reference']:.3f} x {ref_label}'s test robust accuracy")
        lines += [f"Transfer: the RRM student keeps {tr['ratio']:.3f} of its teacher's test robust accuracy "
                  f"({100 * tr['rrm_test_robust']:.2f} % of {100 * tr['teacher_test_robust']:.2f} %){vs_ref}.", ""]
    if cl["test"]:
        lines += [f"### Final models, test split (robust accuracy under {attack})", "",
                  "| claim | RRM robust % | baseline robust % | robust ratio | RRM s | baseline s | time ratio | speed-up | verdict |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for c in cl["test"]:
            lines.append(f"| {c['statement']} | {100 * c['rrm_test_robust']:.2f} | {100 * c['baseline_test_robust']:.2f} | "
                         f"{ratio_s(c['robust_ratio'])} | {secs(c['rrm_seconds'])} | {secs(c['baseline_seconds'])} | "
                         f"{c['time_ratio']:.3f} | {c['speedup']:.1f}x | {'holds' if c['holds'] else '**DOES NOT HOLD**'} |")
        lines.append("")
    if cl["time_to_target"]:
        lines += ["### Time to the target, held-out training slice", "",
                  "| claim | RRM s | baseline s | speed-up | verdict |", "|---|---:|---:|---:|---|"]
        for c in cl["time_to_target"]:
            sp = "-" if c["speedup"] is None else (">= " if c.get("speedup_is_lower_bound") else "") + f"{c['speedup']:.1f}x"
            why = f" ({c['why']})" if c.get("why") else ""
            lines.append(f"| {c['statement']} | {fmt_s(c['rrm_seconds'])} | {fmt_s(c['baseline_seconds'])} | {sp} | "
                         f"{'holds' if c['holds'] else '**DOES NOT HOLD**'}{why} |")
        lines.append("")
    return lines


def _curves(res: dict) -> list[str]:
    t = res["teacher"]
    lines = ["## Curves (held-out training slice)", "", f"![robust accuracy against training time]({res['plot']})", "",
              "| method | epoch | cumulative train s | (with teacher s) | clean % | robust % |", "|---|---:|---:|---:|---:|---:|"]
    if t:
        for p in t["curve"]:
            lines.append(f"| teacher | {p['epoch']} | {secs(p['seconds'])} | - | {100 * p['clean']:.1f} | {100 * p['robust']:.1f} |")
    for name, r in res["rows"].items():
        shift = t["train_seconds"] if (t and r["uses_teacher"]) else None
        for p in r["curve"]:
            shifted = "-" if shift is None else secs(shift + p["seconds"])
            lines.append(f"| {label(name)} | {p['epoch']} | {secs(p['seconds'])} | {shifted} | "
                         f"{100 * p['clean']:.1f} | {100 * p['robust']:.1f} |")
    return lines


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = in_method_order(res)
    t, rows, cl = res["teacher"], res["rows"], res["claims"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, title in ((axes[0], "robust", f"held-out robust accuracy ({monitor_attack(res)})"),
                           (axes[1], "clean", "held-out clean accuracy")):
        for name, r in rows.items():
            color = COLORS.get(name)
            name_label = label(name)
            xs = [p["seconds"] for p in r["curve"]]
            ys = [100 * p[key] for p in r["curve"]]
            if r["uses_teacher"] and t:
                tx = [p["seconds"] for p in t["curve"]]
                ty = [100 * p[key] for p in t["curve"]]
                T = t["train_seconds"]
                ax.plot(tx, ty, ls=":", marker=".", color=color, alpha=0.8,
                        label=f"{name_label}: teacher ({t['method']} {t['arch']})" if name == "rrm" else None)
                ax.axvline(T, color=color, lw=0.6, ls=":", alpha=0.5)
                ax.plot([T + x for x in xs], ys, marker="o", color=color, label=f"{name_label} (teacher time included)")
                if name == "rrm":
                    ax.plot(xs, ys, marker="o", mfc="none", ls="--", color=color, alpha=0.45,
                            label=f"{name_label} student only (teacher excluded)")
            else:
                ax.plot(xs, ys, marker="o", color=color, label=name_label)
        if key == "robust" and "target" in cl:
            ax.axhline(100 * cl["target"], color="k", lw=0.8, ls="--",
                       label=f"target {100 * cl['target']:.1f} % ({cl['target_fraction']:g} x {label(cl['reference'])})")
        ax.set_xlabel(CLOCK_AXIS[res["settings"]["clock"]])
        ax.set_ylabel(f"{title} (%)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    m = res["machine"]
    fig.suptitle(f"{res['settings']['dataset']}, student {res['settings']['student']}, L-inf eps {res['settings']['eps']:g}"
                 f" — {m['cpu'] if m['device'] == 'cpu' else m.get('gpu')}, load {res['load']['median']:g} on "
                 f"{res['load']['cores']} cores" + (" — QUICK (no claim)" if res["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_equal_time(res: dict, path: Path) -> None:
    """Held-out robust accuracy against training time of the equal-time runs, teacher excluded
    (solid) and included (dotted, methods with a teacher), the budget and the target."""
    res = in_method_order(res)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    et, t = res["equal_time"], res["teacher"]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name, r in et["rows"].items():
        xs, ys = [p["seconds"] for p in r["curve"]], [100 * p["robust"] for p in r["curve"]]
        ax.plot(xs, ys, marker="o", color=COLORS.get(name), label=f"{label(name)} ({r['epochs_run']} epochs)")
        if r["uses_teacher"] and t:
            ax.plot([x + t["train_seconds"] for x in xs], ys, ls=":", color=COLORS.get(name),
                    label=f"{label(name)}, teacher time included")
    ax.axvline(et["budget_s"], color="k", lw=0.8, label=f"budget {secs(et['budget_s'])} s")
    if "target" in et["claims"]:
        ax.axhline(100 * et["claims"]["target"], color="k", ls="--", lw=0.8, label="target (0.9 x reference)")
    ax.set_xlabel(CLOCK_AXIS[res["settings"]["clock"]])
    ax.set_ylabel(f"held-out robust accuracy (%)\n{monitor_attack(res)}")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("equal training time" + (" - QUICK (no claim)" if res["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
