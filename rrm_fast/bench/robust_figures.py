"""How every harness table states its robust figures: the attacks are named from the runs'
reports (report.json's "test" / "test_standard", metrics.jsonl's "heldout_attack"), never
written into a table by hand, so a table cannot claim an attack its numbers did not come from.

Results written before the honest default (issue 13) carry CE-only PGD figures ("attack":
"PGD-20", no "attack_set"); they still render, with a line that says what they are.
"""
from __future__ import annotations

CE_ONLY_NOTE = ("**CE-only figures.** {what} come from PGD on cross-entropy alone: a quick check that a model with soft "
                "logits fools, not robust accuracy (docs/evaluation.md; the honest default is the per-sample worst case "
                "over a CE and a margin attack).")


def attack_name(tests) -> str:
    """The attack named by test results (dicts with "attack"); several distinct ones are joined."""
    names = list(dict.fromkeys(t["attack"] for t in tests if t))
    return " / ".join(names) if names else "no attack"


def ce_only(tests) -> bool:
    """Whether any of these results is CE-only PGD (the pgd-ce set, or a result from before sets)."""
    return any(t and t.get("attack_set", "pgd-ce") == "pgd-ce" for t in tests)


def curve_attack(curves, fallback: str | None = None) -> str:
    """The held-out attack of curves (lists of read_curve points), from the metrics rows."""
    names = list(dict.fromkeys(p.get("attack") or fallback or "?" for c in curves for p in c))
    return " / ".join(names) if names else (fallback or "?")


def standard_heading(standards) -> str:
    """The standard column's heading: which first N test images it ran on."""
    ns = sorted({s["n"] for s in standards if s})
    return f"standard (first {'/'.join(map(str, ns))}) %" if ns else "standard %"


def standard_cell(standard: dict | None) -> str:
    return "-" if not standard else f"{100 * standard['robust_acc']:.2f}"


def standard_sentence(standards, test_size) -> str:
    """One sentence naming the standard suite and its subset, or saying it was not run."""
    runs = [s for s in standards if s]
    if not runs:
        return "The standard suite (APGD-CE -> APGD-T -> Square) was not run for these results: its column is empty."
    ns = sorted({s["n"] for s in runs})
    return (f"*standard*: the per-sample worst case of the standard suite, {attack_name(runs)}, each attack on the images "
            f"every earlier one failed on, on the first {'/'.join(map(str, ns))} of those {test_size} test images "
            "(a stated subset: the suite costs 8-13x the pair's CPU time, docs/evaluation.md).")


def warning_lines(named_tests) -> list[str]:
    """The CE-vs-margin warnings of (label, test result) pairs, each with its numbers."""
    lines = [f"- {name}: {w}" for name, t in named_tests if t for w in t.get("warnings", [])]
    return ["CE-vs-margin warnings in the runs' reports (a margin attack found >= 2 points more than CE on the same "
            "samples):", ""] + lines + [""] if lines else []
