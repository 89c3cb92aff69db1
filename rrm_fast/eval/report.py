"""The report: the tables printed after an evaluation and the JSON results file."""
from __future__ import annotations

from ..io import atomic_write_json


def format_robust_table(res: dict, where: str) -> str:
    """The robust-accuracy table: one row per attack (run on, newly fooled, cumulative worst
    case, accuracy alone where known, time), then the time split and any warning."""
    lines = [f"{where}  n={res['n']}  {res['norm']} eps={res['eps']:g}  ({res['suite']} suite, "
             f"{res['attack_precision']} attacks)",
             f"  {'attack':<22}{'run on':>8}{'fooled':>8}{'robust acc':>12}{'alone':>9}{'time':>9}",
             f"  {'clean':<22}{'':>8}{'':>8}{100 * res['clean_acc']:>11.2f}%"]
    rows = res.get("attacks")
    if rows is None:  # the quick suite: one PGD attack on every sample
        rows = [{"attack": f"{res['attack']} x{res['restarts']}", "run_on": round(res["clean_acc"] * res["n"]),
                 "fooled": round((res["clean_acc"] - res["robust_acc"]) * res["n"]),
                 "robust_acc_after": res["robust_acc"], "seconds": res["seconds"]}]
    for row in rows:
        alone = f"{100 * row['robust_acc_alone']:>8.2f}%" if "robust_acc_alone" in row else f"{'':>9}"
        lines.append(f"  {row['attack']:<22}{row['run_on']:>8}{row['fooled']:>8}{100 * row['robust_acc_after']:>11.2f}%"
                     f"{alone}{row['seconds']:>8.1f}s")
    lines.append(f"  {'worst case':<22}{'':>8}{'':>8}{100 * res['robust_acc']:>11.2f}%   ({res['attack']})")
    total = sum(r["seconds"] for r in rows)
    if len(rows) > 1 and total > 0:
        lines.append("  time: " + ", ".join(f"{r['attack']} {r['seconds']:.1f}s ({100 * r['seconds'] / total:.0f}%)"
                                            for r in rows))
    lines += [f"  [WARN] {w}" for w in res.get("warnings", [])]
    return "\n".join(lines)


def format_certify_table(res: dict, where: str) -> str:
    lines = [f"{where}  n={res['n']}  sigma={res['sigma']:g}  n0={res['n0']} n={res['n_samples']} "
             f"alpha={res['alpha']:g}  (certify suite)",
             f"  {'radius':<10}{'certified acc':>14}"]
    for r, acc in res["certified_acc"].items():
        flag = "   (above the largest certifiable radius with this n)" if float(r) > res["max_certifiable_radius"] else ""
        lines.append(f"  {r:<10}{100 * acc:>13.2f}%{flag}")
    lines.append(f"  ACR {res['acr']:.4f}   abstained {100 * res['abstain_rate']:.1f}%   largest certifiable radius "
                 f"{res['max_certifiable_radius']:.3f}")
    return "\n".join(lines)


def write_results(path, res: dict) -> None:
    """The JSON results file, written atomically (a crash leaves the old file or the new one)."""
    atomic_write_json(path, res)
