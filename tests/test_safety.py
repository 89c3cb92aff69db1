"""Safe loading: safetensors, or legacy torch files through weights_only=True only; pickles
that would run code are refused (and never run); external state-dict layouts (RobustBench,
timm/torchvision, the robustness library) map onto the zoo's architectures."""
import json
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from rrm_fast import train as train_mod
from rrm_fast.checkpoint import (CheckpointError, UnsafeCheckpointError, load_model, load_weights_into, read_state_dict,
                                 save_model)
from rrm_fast.models import create_model
from rrm_fast.train import TrainConfig, train_run


class RunsCode:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(writer, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"fc.weight": torch.zeros(10, 128), "extra": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(path)
    msg = str(e.value)
    assert "needs code to load" in msg and "system" in msg
    assert "weights_only=False" in msg and "only for files you trust" in msg and "save_file" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_the_cli_refuses_a_malicious_teacher_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": RunsCode(marker)}, path)
    rc = train_mod.main(["--method", "kd", "--teacher", str(path), "--teacher-arch", "cnn_small", "--train-size", "100",
                         "--test-size", "50", "--monitor-size", "50", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and "needs code to load" in err[-1], err
    assert not marker.exists() and not (tmp_path / "o").exists()


def _kuangliu_names(state: dict) -> dict:
    """Our resnet keys as RobustBench / kuangliu-style ResNets name them, under DataParallel."""
    out = {}
    for k, v in state.items():
        if k.startswith("normalize."):
            continue
        k = k.removeprefix("backbone.")
        k = re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", k)
        k = k.replace("fc.", "linear.") if k.startswith("fc.") else k
        out["module." + k] = v.clone()
    return out


def test_robustbench_style_resnet_state_dict_loads(tmp_path):
    src = create_model("resnet18", 10, 3, (0.5,) * 3, (0.5,) * 3, 32)
    path = tmp_path / "rb.pt"
    torch.save({"state_dict": _kuangliu_names(src.state_dict()), "epoch": 99}, path)
    dst = create_model("resnet18", 10, 3, (0.4,) * 3, (0.2,) * 3, 32)
    load_weights_into(dst, path)
    for k, v in src.state_dict().items():
        if not k.startswith("normalize."):
            assert torch.equal(dst.state_dict()[k], v), k
    assert torch.allclose(dst.normalize.mean.flatten(), torch.tensor([0.4] * 3))  # dataset stats kept


def test_robustness_library_layout_with_normalizer_and_attacker_copy(tmp_path):
    src = create_model("cnn_small", 10, 1, (0.3,), (0.3,), 28)
    state = {}
    for k, v in src.state_dict().items():
        if k.startswith("normalize."):
            continue
        k = k.removeprefix("backbone.")
        state["module.model." + k] = v
        state["module.attacker.model." + k] = v.clone()  # the library stores the model twice
    state["module.normalizer.new_mean"] = torch.tensor([0.25]).view(1, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor([0.5]).view(1, 1, 1)
    path = tmp_path / "madry.safetensors"  # a bare safetensors file (no rrm_fast sidecar)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    dst = create_model("cnn_small", 10, 1, (0.5,), (0.5,), 28)
    load_weights_into(dst, path)
    assert torch.equal(dst.fc.weight, src.fc.weight) and float(dst.normalize.mean) == 0.25 and float(dst.normalize.std) == 0.5


def test_a_state_dict_for_another_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("cnn_wide").state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_weights_into(create_model("cnn_small"), path)
    msg = str(e.value)
    assert "does not fit architecture cnn_small" in msg and "other shapes" in msg and "\n" not in msg
    sd = create_model("cnn_small").state_dict()
    sd["head.extra"] = torch.zeros(2)
    del sd["fc.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing \['fc.bias'\]; 1 unexpected \['head.extra'\]"):
        load_weights_into(create_model("cnn_small"), path)


def test_unreadable_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        read_state_dict(bad)
    m = create_model("cnn_small")
    good = save_model(tmp_path / "m.safetensors", m)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(good)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        (tmp_path / "w.npz").write_bytes(b"x")
        read_state_dict(tmp_path / "w.npz")


def test_external_teacher_trains_a_student_end_to_end(tmp_path):
    teacher = create_model("cnn_small", 10, 1, (0.286,), (0.353,), 28)
    state = {("module." + k.removeprefix("backbone.")).replace("module.fc.", "module.linear."): v
             for k, v in teacher.state_dict().items() if not k.startswith("normalize.")}
    path = tmp_path / "teacher.pth"
    torch.save({"model": state}, path)
    rep = train_run(TrainConfig(method="kd", teacher=str(path), teacher_arch="cnn_small", epochs=1, train_size=100,
                                batch_size=50, monitor_size=50, monitor_steps=1, eval_steps=1, test_size=50,
                                out=str(tmp_path / "run")), progress=False)
    assert rep["teacher"] == "cnn_small" and rep["test"]["n"] == 50
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["teacher_arch"] == "cnn_small"


def test_a_teacher_file_without_sidecar_asks_for_its_architecture(tmp_path, capsys):
    path = tmp_path / "t.pt"
    torch.save(create_model("cnn_small").state_dict(), path)
    rc = train_mod.main(["--method", "kd", "--teacher", str(path), "--no-progress", "--out", str(tmp_path / "o"),
                         "--train-size", "100", "--monitor-size", "50"])
    assert rc == 2 and "--teacher-arch" in capsys.readouterr().err


def test_the_conversion_command_in_the_message_works_on_a_trusted_file(tmp_path):
    path = tmp_path / "whole_module.pt"
    torch.save(create_model("cnn_small"), path)  # a pickled nn.Module: needs code, refused
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(path)
    code = re.search(r"python -c '(.+?)' \(only for files you trust\)", str(e.value)).group(1)
    exec(code, {})  # what a user would run for a file they trust
    dst = create_model("cnn_small")
    load_weights_into(dst, path.with_suffix(".safetensors"))
