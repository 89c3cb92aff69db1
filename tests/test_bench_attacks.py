"""python -m rrm_fast.bench attacks: ours next to torchattacks on the same model and images."""
from __future__ import annotations

import json

import pytest

from rrm_fast.bench.__main__ import main as bench_main
from helpers import noise_trained_checkpoint, one_thread


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    with one_thread():
        return noise_trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "final.safetensors", eps=0.05)


def test_bench_attacks_reports_both_libraries_on_the_same_images(ckpt, tmp_path, capsys):
    pytest.importorskip("torchattacks")
    out = tmp_path / "attacks.json"
    rc = bench_main(["attacks", "--checkpoint", ckpt, "--quick", "--n", "12", "--batch-size", "6", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    rows = {(r["library"], r["attack"]): r for r in res["rows"]}
    assert {lib for lib, _ in rows} == {"rrm_fast", "torchattacks"} and res["n"] == 12
    assert ("torchattacks", "AutoAttack standard") in rows and ("rrm_fast", "standard suite") in rows
    for r in res["rows"]:  # each row judged on the same 12 images: robust <= clean, mask per image
        assert len(r["mask"]) == 12 and r["robust_acc"] <= res["clean_acc"] and r["seconds"] >= 0
        assert r["robust_acc"] == pytest.approx(r["mask"].count("1") / 12)
    v = res["verdict"]
    assert v["holds"] == (v["ours_standard"] <= v["torchattacks_autoattack"])
    assert res["clock"] == "thread" and res["machine"]["summary"] and "load average" in res["load_text"]
    md = out.with_suffix(".md").read_text()
    assert "| torchattacks | AutoAttack standard |" in md and "at least as strong" in md


def test_bench_attacks_refuses_an_out_that_is_not_json(ckpt, tmp_path, capsys):
    rc = bench_main(["attacks", "--checkpoint", ckpt, "--quick", "--out", ckpt])
    assert rc == 2 and "--out must name a .json file" in capsys.readouterr().err
