"""The documented example of the fused feature-matching loss runs, and the docs show it verbatim.

docs/feature_matching.md holds two python blocks: a short API snippet and a full training loop
that must be byte-identical to examples/use_fused_loss.py (so the docs cannot drift from the
file the test runs).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "feature_matching.md"
EXAMPLE = REPO / "examples" / "use_fused_loss.py"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_docs_show_the_example_file_verbatim():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 2, f"expected an API snippet and the full example in {DOC}, found {len(blocks)} python blocks"
    assert blocks[1] == EXAMPLE.read_text(), f"the second python block of {DOC.name} differs from {EXAMPLE}; paste the file in again"


def test_docs_api_snippet_runs_and_trains_in_the_right_direction():
    snippet = python_blocks(DOC.read_text())[0]
    torch.manual_seed(0)  # the snippet draws its inputs with torch.randn
    namespace: dict = {}
    exec(compile(snippet, f"{DOC.name}[snippet]", "exec"), namespace)
    student, teacher = namespace["student_features"], namespace["teacher_features"]
    logits, labels, criterion = namespace["logits"].detach(), namespace["labels"], namespace["criterion"]
    # a gradient-descent step on the features (the gradient both backward calls left) raises the
    # cosine to the teacher and lowers the RRM loss: the snippet minimises what it should
    stepped = (student - 100.0 * student.grad).detach()
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(stepped, teacher).mean() > cosine(student.detach(), teacher).mean() + 0.01
    assert criterion(logits, labels, stepped, teacher) < namespace["loss"] - 0.01


def test_example_script_runs_and_its_loss_goes_down():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"RRM loss (-?[\d.]+) -> (-?[\d.]+) after (\d+) steps", proc.stdout)
    assert match, f"unexpected output from {EXAMPLE.name}: {proc.stdout!r}"
    first, last = float(match.group(1)), float(match.group(2))
    # Matching a teacher's features drives mean cosine up, so the signed loss must fall clearly.
    assert last < first - 0.1, f"RRM loss went {first} -> {last}: the example's student is not learning"
