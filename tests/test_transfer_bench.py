"""The transfer study: its report renders every row, including one whose teacher is 0% robust
(its ratio is None: shown as '-', never a crash after hours of runs); its rows change one thing
each (a student-only lever keeps the base row's teacher); the no-teacher ablation is what it says."""
import json
from pathlib import Path

from rrm_fast.bench import transfer
from rrm_fast.bench.transfer_report import render_markdown
from rrm_fast.eval import evaluate_robustness
from rrm_fast.train.teacher import teacher_run_config


def figures(clean, robust):
    return {"n": 64, "clean": clean, "robust": robust, "attack": "worst of APGD-CE-5, APGD-T-5x3", "warnings": [],
            "p_max": 0.5, "max_logit": 2.0}


def result(teacher_robust, ratios):
    teacher = {"checkpoint": "t.safetensors", "arch": "cnn_small", "method": "fast_at", "epochs_run": 1,
               "augment": "auto", "train_seconds": 3.0, "heldout": figures(0.6, teacher_robust)}
    rows = [{"name": name, "lever": "baseline", "setting": name, "final": False, "epochs_run": 1, "train_seconds": 2.0,
             "reused": False, "run_load": {"median": 1.0}, "heldout": figures(0.5, 0.25), "ratio": ratio,
             "teacher": {k: teacher[k] for k in ("checkpoint", "arch", "method", "epochs_run")}}
            for name, ratio in zip(("default", "paper", "no_teacher"), ratios)]
    rows[1]["setting"] = "cosine + (||phi_S|| / ||phi_T|| - 1)^2"
    base = {"method": "rrm", "student": "cnn_wide", "teacher": "cnn_small", "teacher_method": "fast_at",
            "teacher_epochs": 1, "head_init": "teacher", "epochs": 1, "lr": 0.05, "batch_size": 128,
            "schedule": "auto", "eps": 0.1, "norm": "Linf", "amp": True, "train_size": 256, "monitor_size": 64, "seed": 0}
    load = {"median": 1.0, "min": 0.5, "max": 2.0, "samples": 3, "cores": 2}
    return {"command": "python -m rrm_fast.bench transfer --quick", "started": "s", "finished": "f",
            "wall_seconds": 60.0, "rendered": "r", "quick": True, "machine": {"summary": "a CPU"}, "load": load,
            "clock": "thread", "base": base, "rows": rows, "teachers": [teacher], "plot": "transfer.png"}


def test_report_shows_a_missing_ratio_as_a_dash_and_a_real_one_to_three_places():
    md = render_markdown(result(0.0, (None, None, None)))  # a teacher the attacks break completely
    assert "| `default` |" in md and "| **25.0** | - |" in md
    assert "ratio - to its teacher" in md and "keeps - of its teacher's" in md
    md = render_markdown(result(0.5, (0.5, 0.25, 0.125)))
    assert "| **25.0** | 0.500 |" in md and "keeps 0.250 of its teacher's" in md and "keeps 0.500 (" in md
    row_lines = [line for line in md.splitlines() if line.startswith("| 2 |")]  # a norm's bars stay in the cell
    assert row_lines and row_lines[0].count("|") - row_lines[0].count("\\|") == 13


def test_no_teacher_row_is_the_teacher_free_ablation():
    row = {r.name: r for r in transfer.ROWS}["no_teacher"]
    assert row.options == {"feat_weight": 0.0, "xent_weight": 1.0} and row.changes == {"head_init": "random"}
    assert not row.final  # only the final rows read the test split
    assert {r.name for r in transfer.ROWS if r.final} == {"default", "paper"}


def test_a_student_only_lever_keeps_the_base_rows_teacher(tmp_path, monkeypatch):
    # the trainer hands the run's lr / schedule to an architecture-named teacher; the study's lr and
    # schedule rows must change the student only, so they take the base row's teacher by its checkpoint
    monkeypatch.setenv("RRM_FAST_CACHE", str(tmp_path / "cache"))
    args = transfer.build_parser().parse_args(["--quick", "--runs-dir", str(tmp_path / "runs")])
    size = transfer.harness.budget(args, transfer.FULL, transfer.QUICK)
    rows = {r.name: r for r in transfer.ROWS}
    base_teacher = teacher_run_config(transfer.row_config(rows["default"], size, args))
    for name in ("lr_0.1", "schedule_cyclic"):
        cfg = transfer.row_config(rows[name], size, args)
        assert cfg.teacher == str(Path(base_teacher.out) / "final.safetensors")
        assert (cfg.lr, cfg.schedule) != (0.05, "auto")  # the row's change still reaches the student
    for name in ("crop_flip", "teacher_pgd_at", "teacher_8_epochs", "default"):  # levers the teacher shares
        cfg = transfer.row_config(rows[name], size, args)
        assert cfg.teacher == "cnn_small" and (name == "default") == (teacher_run_config(cfg).out == base_teacher.out)


def test_a_student_only_row_alone_trains_and_reports_the_base_teacher(tmp_path):
    argv = ["--quick", "--rows", "lr_0.1", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out")]
    assert transfer.main(argv, evaluate=evaluate_robustness) == 0
    res = json.loads((tmp_path / "out" / "transfer.json").read_text())
    (row,) = res["rows"]
    (teacher,) = res["teachers"]
    assert row["teacher"]["checkpoint"] == teacher["checkpoint"] and teacher["method"] == "fast_at"
    cfg = json.loads((tmp_path / "runs" / "lr_0.1" / "config.json").read_text())
    assert cfg["teacher"] == teacher["checkpoint"] and cfg["lr"] == 0.1
    t_cfg = json.loads((Path(teacher["checkpoint"]).parent / "config.json").read_text())
    assert t_cfg["lr"] == 0.05 and t_cfg["method"] == "fast_at"
