"""Nothing a user types destroys a file, hangs without warning, or ends in a traceback (issue 16).

A table of bad inputs to every CLI (train flags, --config files, --resume, eval, info, bench).
Each row runs the CLI in-process (its ``main(argv)``, as ``python -m`` would) in a scratch
directory and asserts: the exit code (2), exactly one line on stderr naming the problem (or,
for the rows marked as warnings, exactly one "warning:" line and a run that goes on), no
traceback, and every file that existed before - the shared inputs and the row's own - byte for
byte the same afterwards, with nothing added or removed (a failed start leaves nothing behind).
A few rows run as real subprocesses to show the process exit codes. Then the YAML alias bomb
(refused in < 1 s with < 100 MB), the certify time estimate (refused within 30 s), the eval
result history, and RRM_FAST_DEBUG.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import stat
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import REPO, child_env, write_fashion_mnist, write_image_folder
from rrm_fast.checkpoint import save_model
from rrm_fast.models import create_model

TINY = ["--train-size", "100", "--monitor-size", "50", "--test-size", "50", "--epochs", "1", "--eval-steps", "1",
        "--monitor-steps", "1", "--batch-size", "50", "--no-progress"]
NATURAL = ["--method", "natural", "--data-dir", "{s}/fm", *TINY]
BOMB = ("method: rrm\nteacher: cnn_small\nmethod_options:\n  feature_loss: &i [&h [&g [&f [&e [&d [&c [&b [&a "
        "[lol, lol, lol, lol, lol, lol, lol, lol, lol], *a, *a, *a, *a, *a, *a, *a, *a], *b, *b, *b, *b, *b, *b, *b, "
        "*b], *c, *c, *c, *c, *c, *c, *c, *c], *d, *d, *d, *d, *d, *d, *d, *d], *e, *e, *e, *e, *e, *e, *e, *e], *f, "
        "*f, *f, *f, *f, *f, *f, *f], *g, *g, *g, *g, *g, *g, *g, *g], *h, *h, *h, *h, *h, *h, *h, *h]\n")
CLIS = {"train": "rrm_fast.train", "eval": "rrm_fast.eval", "info": "rrm_fast.info", "bench": "rrm_fast.bench.__main__"}


@dataclass
class Case:
    cli: str
    argv: list[str]           # {s}: the shared inputs, {t}: the row's own directory (also the working directory)
    says: str                 # part of the one line on stderr
    files: dict = field(default_factory=dict)   # the row's own files, written before the run (bytes or text)
    warning: bool = False     # a warning and a run that goes on (exit 0), writing only under {t}/run


CASES = {
    # ---------------------------------------------------------------- --config files
    "config epochs 1.7": Case("train", ["--config", "{t}/c.yaml"], "--epochs: expected int, got 1.7",
                              {"c.yaml": "method: natural\nepochs: 1.7\n"}),
    "config epochs 'three'": Case("train", ["--config", "{t}/c.yaml"], "--epochs: expected int, got three",
                                  {"c.yaml": "method: natural\nepochs: \"three\"\n"}),
    "config epochs true": Case("train", ["--config", "{t}/c.yaml"], "--epochs: expected int, got True",
                               {"c.yaml": "method: natural\nepochs: true\n"}),
    "config eps true": Case("train", ["--config", "{t}/c.yaml"], "--eps: expected float, got True",
                            {"c.yaml": "method: natural\neps: true\n"}),
    "config lr [1, 2]": Case("train", ["--config", "{t}/c.yaml"], "lr: expected a single value, got a list of 2 item(s)",
                             {"c.yaml": "method: natural\nlr: [1, 2]\n"}),
    "config out 12": Case("train", ["--config", "{t}/c.yaml"], "--out: expected str or null, got 12",
                          {"c.yaml": "method: natural\nout: 12\n"}),
    "config YAML syntax": Case("train", ["--config", "{t}/c.yaml"], "not valid YAML: expected ',' or ']'",
                               {"c.yaml": "method: natural\nlr: [1, 2\n"}),
    "config duplicate key": Case("train", ["--config", "{t}/c.yaml"], "duplicate key 'epochs'",
                                 {"c.yaml": "method: natural\nepochs: 2\nepochs: 3\n"}),
    "config python tag": Case("train", ["--config", "{t}/c.yaml"], "tag !!python/object/apply:os.system is refused",
                              {"c.yaml": "method: !!python/object/apply:os.system [\"touch pwned\"]\n"}),
    "config alias bomb": Case("train", ["--config", "{t}/c.yaml"], "more than 10000 values once YAML aliases are expanded",
                              {"c.yaml": BOMB}),
    "config recursive alias": Case("train", ["--config", "{t}/c.yaml"], "recursive YAML alias",
                                   {"c.yaml": "method: natural\nlr: &a [*a]\n"}),
    "config a list": Case("train", ["--config", "{t}/c.yaml"], "must hold a mapping of names to values, not a list",
                          {"c.yaml": "- 1\n- 2\n"}),
    "config unknown key": Case("train", ["--config", "{t}/c.yaml"], "unknown keys ['epoch']",
                               {"c.yaml": "method: natural\nepoch: 3\n"}),
    "config method_options 3": Case("train", ["--config", "{t}/c.yaml"], "method_options must be a mapping",
                                    {"c.yaml": "method: natural\nmethod_options: 3\n"}),
    "config str option a list": Case("train", ["--config", "{t}/c.yaml"], "feature_loss: expected a single value",
                                     {"c.yaml": "method: rrm\nteacher: cnn_small\nfeature_loss: [a, b]\n"}),
    "config option out of range": Case("train", ["--config", "{t}/c.yaml", "--data-dir", "{s}/fm"],
                                       "--method kd: --kd-temp must be > 0 (got 0)",
                                       {"c.yaml": "method: kd\nteacher: cnn_small\nkd_temp: 0\n"}),
    "config JSON syntax": Case("train", ["--config", "{t}/c.json"], "not valid JSON",
                               {"c.json": '{"method": "natural",}'}),
    "config JSON NaN": Case("train", ["--config", "{t}/c.json"], "--lr: expected a finite number, got nan",
                            {"c.json": '{"method": "natural", "lr": NaN}'}),
    "config JSON 1e400": Case("train", ["--config", "{t}/c.json"], "--epochs: expected int, got inf",
                              {"c.json": '{"method": "natural", "epochs": 1e400}'}),
    "config JSON nested deep": Case("train", ["--config", "{t}/c.json"], "nests too deeply",
                                    {"c.json": '{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}"}),
    "config over 1 MiB": Case("train", ["--config", "{t}/c.yaml"], "a config file is at most 1048576 bytes",
                              {"c.yaml": "method: natural\n" + "#" * (1 << 20)}),
    "config not UTF-8": Case("train", ["--config", "{t}/c.yaml"], "is not UTF-8 text", {"c.yaml": b"lr: \xff\xfe\n"}),
    "config a directory": Case("train", ["--config", "{t}"], "is a directory"),
    "config missing": Case("train", ["--config", "{t}/nope.yaml"], "--config {t}/nope.yaml not found"),
    "config /dev/zero": Case("train", ["--config", "/dev/zero"], "/dev/zero is not a regular file"),
    # ---------------------------------------------------------------- flags
    "flag typo": Case("train", ["--method", "natural", "--epochz", "3"],
                      "unrecognized arguments: --epochz 3 (did you mean --epochs?); see python -m rrm_fast.train --help"),
    "flag --epochs 1.7": Case("train", ["--method", "natural", "--epochs", "1.7"], "--epochs: expected int, got 1.7"),
    "flag --epochs three": Case("train", ["--method", "natural", "--epochs", "three"], "--epochs: expected int, got three"),
    "flag --epochs 0": Case("train", ["--method", "natural", "--epochs", "0"], "--epochs must be >= 1 (got 0)"),
    "flag --lr nan": Case("train", ["--method", "natural", "--lr", "nan"], "--lr: expected float, got nan"),
    "flag --momentum 2": Case("train", ["--method", "natural", "--momentum", "2"], "--momentum must be <= 1 (got 2"),
    "flag --seed -1": Case("train", ["--method", "natural", "--seed", "-1"], "--seed must be >= 0 (got -1)"),
    "flag --amp maybe": Case("train", ["--method", "natural", "--amp", "maybe"], "unrecognized arguments: maybe"),
    "flag --method bogus": Case("train", ["--method", "bogus"], "argument --method: invalid choice: 'bogus'"),
    "flag --device banana": Case("train", [*NATURAL, "--device", "banana"],
                                 "--device 'banana' is not a device rrm_fast runs on; use auto, cpu, cuda or cuda:N"),
    "flag --device meta": Case("train", [*NATURAL, "--device", "meta"], "--device 'meta' is not a device"),
    "flag --feature-loss bogus": Case("train", ["--method", "rrm", "--teacher", "cnn_small", "--feature-loss", "bogus"],
                                      "argument --feature-loss: invalid choice: 'bogus'"),
    "flag --replays 0": Case("train", ["--method", "free_at", "--replays", "0"], "--method free_at: --replays must be >= 1"),
    "flag --sigma -1": Case("train", ["--method", "gaussian_aug", "--sigma", "-1"], "--sigma must be >= 0 (got -1"),
    "flag --train-size 0": Case("train", [*NATURAL, "--train-size", "0"], "--train-size must be >= 1 (got 0)"),
    "flag --epochs 1e23": Case("train", ["--method", "natural", "--epochs", "99999999999999999999999"],
                               "--epochs must be <= 100000 (got 99999999999999999999999)"),
    "flag --eps 1e309": Case("train", ["--method", "natural", "--eps", "1e309"], "--eps: expected a finite number, got inf"),
    "flag --norm l3": Case("train", ["--method", "natural", "--norm", "l3"], "--norm: expected one of Linf, L2, got l3"),
    "flag without its value": Case("train", ["--student"], "argument --student: expected one argument; see"),
    "--compile with kdiga": Case("train", [*NATURAL, "--method", "kdiga", "--teacher", "cnn_small", "--compile"],
                                 "torch.compile does not support; drop --compile"),
    "--monitor-size above the data": Case("train", [*NATURAL, "--monitor-size", "500"],
                                          "--monitor-size 500 must be less than fashion_mnist's 200 training images"),
    "no teacher": Case("train", ["--method", "kd"], "--method kd needs a teacher"),
    "teacher-method needing a teacher": Case("train", ["--method", "rrm", "--teacher", "cnn_small", "--teacher-method",
                                                       "kd"], "--teacher-method 'kd' must be a method that trains"),
    "no CIFAR folder": Case("train", ["--method", "natural", "--dataset", "cifar10"], "cifar10 needs a data folder"),
    "missing --data-dir": Case("train", ["--method", "natural", "--data-dir", "{t}/nope"], "Fashion-MNIST not found at"),
    "--resolution on a fixed-size dataset": Case("train", [*NATURAL, "--resolution", "64"], "has a fixed image size"),
    # ---------------------------------------------------------------- data and models, before any file is written
    "vgg11 on 28-px Fashion-MNIST": Case("train", [*NATURAL, "--student", "vgg11", "--out", "{t}/run"],
                                         "--student vgg11 cannot take fashion_mnist's 28x28 images"),
    "vgg16 teacher architecture": Case("train", [*NATURAL, "--method", "rrm", "--teacher", "vgg16", "--out", "{t}/run"],
                                       "--teacher vgg16 cannot take fashion_mnist's 28x28 images"),
    "vgg11 --teacher-arch": Case("train", [*NATURAL, "--method", "kd", "--teacher", "{s}/s.safetensors", "--teacher-arch",
                                           "vgg11", "--out", "{t}/run"], "--teacher-arch vgg11 cannot take"),
    "RGB teacher on grey images": Case("train", [*NATURAL, "--method", "kd", "--teacher", "{s}/rgb.safetensors", "--out",
                                                 "{t}/run"], "takes 3-channel images but fashion_mnist has 1"),
    "sidecar of another class count": Case("train", [*NATURAL, "--method", "kd", "--teacher", "{s}/five.safetensors",
                                                     "--out", "{t}/run"], "its sidecar describes cnn_small with 5 classes"),
    "sidecar of another width": Case("train", [*NATURAL, "--method", "rrm", "--teacher", "{s}/wide.safetensors",
                                               "--out", "{t}/run"], "and 256-d features, but the weights have other shapes"),
    "sidecar that is an eval result": Case("train", [*NATURAL, "--method", "kd", "--teacher", "{s}/swapped.safetensors",
                                                     "--out", "{t}/run"], "does not describe an rrm_fast model"),
    # ---------------------------------------------------------------- --out of a training run
    "--out is a file": Case("train", [*NATURAL, "--out", "{s}/notes.txt"], "--out {s}/notes.txt exists and is not a directory"),
    "--out under a file": Case("train", [*NATURAL, "--out", "{s}/notes.txt/run"], "{s}/notes.txt is not a directory"),
    "--out under /dev/full": Case("train", [*NATURAL, "--out", "/dev/full/run"], "/dev/full is not a directory"),
    "--out holding final.safetensors": Case("train", [*NATURAL, "--out", "{s}/has_final"], "already holds final.safetensors"),
    "--out holding metrics.jsonl": Case("train", [*NATURAL, "--out", "{s}/has_metrics"], "already holds metrics.jsonl"),
    "--out holding last.json": Case("train", [*NATURAL, "--out", "{s}/has_last"], "already holds last.json"),
    "--out holding report.json": Case("train", [*NATURAL, "--out", "{s}/has_report"], "already holds report.json"),
    "--out holding state/": Case("train", [*NATURAL, "--out", "{s}/has_state"], "already holds state"),
    "--out holding TensorBoard events": Case("train", [*NATURAL, "--out", "{s}/has_events"],
                                             "already holds events.out.tfevents.1.host"),
    "--out holding a run": Case("train", [*NATURAL, "--out", "{s}/has_run"], "already holds a run (config.json)"),
    "demo --out holding demo.json": Case("train", ["--out", "{s}/has_demo", "--no-progress"], "already holds demo.json"),
    "demo --out holding a natural run": Case("train", ["--out", "{s}/has_demo_natural", "--no-progress"],
                                             "has_demo_natural/natural already holds a run (config.json)"),
    # ---------------------------------------------------------------- --resume
    "resume without a run": Case("train", ["--resume", "{t}/nope"], "no config.json there"),
    "resume config.json edited": Case("train", ["--resume", "{s}/resume_edited"],
                                      "config.json: --epochs: expected a whole number, got 'three'"),
    "resume config.json damaged": Case("train", ["--resume", "{s}/resume_damaged"], "config.json: not valid JSON"),
    "resume with a --config": Case("train", ["--resume", "{s}/has_run", "--config", "{t}/c.yaml"], "drop --config",
                                   {"c.yaml": "method: natural\n"}),
    "resume a file": Case("train", ["--resume", "{s}/notes.txt"], "no config.json there"),
    "resume with another --lr": Case("train", ["--resume", "{s}/has_run", "--lr", "0.1"], "drop --lr"),
    # ---------------------------------------------------------------- eval: its outputs never replace an input
    "eval --out the checkpoint": Case("eval", ["{s}/s.safetensors", "--out", "{s}/s.safetensors"],
                                      "--out {s}/s.safetensors is the checkpoint being evaluated"),
    "eval --out its sidecar": Case("eval", ["{s}/s.safetensors", "--out", "{s}/s.json"],
                                   "--out {s}/s.json is the checkpoint's sidecar being evaluated"),
    "eval --out another sidecar": Case("eval", ["{s}/s.safetensors", "--out", "{s}/rgb.json"],
                                       "is the sidecar of the checkpoint {s}/rgb.safetensors"),
    "eval --out a missing sidecar's name": Case("eval", ["{s}/s.safetensors", "--out", "{t}/m.json"],
                                                "is the sidecar of the checkpoint {t}/m.safetensors",
                                                {"m.safetensors": b"weights without their sidecar"}),
    "eval --out /dev/full": Case("eval", ["{s}/s.safetensors", "--out", "/dev/full"], "/dev/full is not a regular file"),
    "eval --out a directory": Case("eval", ["{s}/s.safetensors", "--out", "{t}"], "--out {t} is a directory"),
    "eval --out under /dev/full": Case("eval", ["{s}/s.safetensors", "--out", "/dev/full/r.json"],
                                       "/dev/full is not a directory"),
    "eval --out a file of the user's": Case("eval", ["{s}/s.safetensors", "--out", "{s}/notes.txt"],
                                            "exists and is not an rrm_fast evaluation result"),
    "eval --out a run's config.json": Case("eval", ["{s}/s.safetensors", "--out", "{s}/has_run/config.json"],
                                           "exists and is not an rrm_fast evaluation result"),
    "eval progress file of the user's": Case("eval", ["{s}/s.safetensors", "--out", "{t}/r.json"],
                                             "its progress file {t}/r.partial.json exists and is not",
                                             {"r.partial.json": "my own file\n"}),
    "eval --n 1.5": Case("eval", ["{s}/s.safetensors", "--suite", "certify", "--n", "1.5"],
                         "argument --n: invalid whole number value: '1.5'"),
    "eval --n 0": Case("eval", ["{s}/s.safetensors", "--suite", "certify", "--n", "0"], "--n0 and --n must be >= 1"),
    "eval --steps 0": Case("eval", ["{s}/s.safetensors", "--steps", "0"], "--steps must be >= 1"),
    "eval --eps -1": Case("eval", ["{s}/s.safetensors", "--eps", "-1"], "--eps must be >= 0"),
    "eval --radii a": Case("eval", ["{s}/s.safetensors", "--radii", "0,a"], "--radii must be comma-separated numbers"),
    "eval --suite bogus": Case("eval", ["{s}/s.safetensors", "--suite", "bogus"], "argument --suite: invalid choice"),
    "eval flag typo": Case("eval", ["{s}/s.safetensors", "--test-sise", "5"],
                           "unrecognized arguments: --test-sise 5 (did you mean --test-size?); see python -m "
                           "rrm_fast.eval --help"),
    "eval --device banana": Case("eval", ["{s}/s.safetensors", "--device", "banana"], "--device 'banana' is not a device"),
    "eval no checkpoint": Case("eval", [], "the following arguments are required: checkpoint; see"),
    "eval a directory as checkpoint": Case("eval", ["{s}"], "is a directory; pass the .safetensors file"),
    "eval /dev/null as checkpoint": Case("eval", ["/dev/null"], "checkpoint metadata /dev/null.json is missing"),
    "eval --split validation": Case("eval", ["{s}/s.safetensors", "--split", "validation"],
                                    "argument --split: invalid choice: 'validation'"),
    "eval --norm l3": Case("eval", ["{s}/s.safetensors", "--norm", "l3"], "unknown norm 'l3'"),
    "eval --batch-size 0": Case("eval", ["{s}/s.safetensors", "--batch-size", "0"], "--batch-size must be >= 1"),
    "eval --cert-alpha 2": Case("eval", ["{s}/s.safetensors", "--cert-alpha", "2"], "--cert-alpha must be in (0, 1)"),
    "eval a missing checkpoint": Case("eval", ["{t}/nope.safetensors"], "checkpoint {t}/nope.safetensors not found"),
    "eval sidecar of another class count": Case("eval", ["{s}/five.safetensors"],
                                                "its sidecar describes cnn_small with 5 classes"),
    "eval sidecar of another width": Case("eval", ["{s}/wide.safetensors"], "256-d features, but the weights have"),
    "eval sidecar that is an eval result": Case("eval", ["{s}/swapped.safetensors"], "does not describe an rrm_fast model"),
    "eval RGB checkpoint on grey images": Case("eval", ["{s}/rgb.safetensors", "--dataset", "fashion_mnist"],
                                               "checkpoint expects 3-channel inputs and 10 classes but fashion_mnist"),
    "eval no CIFAR folder": Case("eval", ["{s}/s.safetensors", "--dataset", "cifar10", "--data-dir", "{t}/nope"],
                                 "cifar10 not found at {t}/nope"),
    # ---------------------------------------------------------------- eval: long work says how long
    "eval certify --n 1e12": Case("eval", ["{s}/s.safetensors", "--suite", "certify", "--n", "1e12", "--sigma", "0.25"],
                                  "more than 12 h; lower --n, --n0 or --test-size, or pass --allow-long"),
    "eval standard --n-queries 1e9": Case("eval", ["{s}/s.safetensors", "--suite", "standard", "--n-queries", "1e9",
                                                   "--out", "{t}/r.json"], "or pass --allow-long to run it anyway"),
    "eval quick --steps 1e8": Case("eval", ["{s}/s.safetensors", "--steps", "100000000", "--out", "{t}/r.json"],
                                   "or pass --allow-long to run it anyway"),
    # ---------------------------------------------------------------- info and bench
    "info flag typo": Case("info", ["--bogus"], "unrecognized arguments: --bogus; see python -m rrm_fast.info --help"),
    "bench unknown command": Case("bench", ["claimz"], "unknown command 'claimz'"),
    "bench claims flag typo": Case("bench", ["claims", "--methodz", "rrm"], "(did you mean --methods?); see"),
    "bench claims unknown method": Case("bench", ["claims", "--methods", "bogus", "--out", "{t}/o"],
                                       "--methods: unknown ['bogus']"),
    "bench compare without --out": Case("bench", ["compare"], "the following arguments are required: --out"),
    "bench steps --pgd-steps 0": Case("bench", ["steps", "--pgd-steps", "0"], "--pgd-steps needs positive integers"),
    "bench steps --out a directory": Case("bench", ["steps", "--out", "{t}"], "exists and is not a regular file"),
    "bench steps --pgd-steps a": Case("bench", ["steps", "--pgd-steps", "a"], "--pgd-steps needs positive integers"),
    "bench compare --out /dev/full": Case("bench", ["compare", "--out", "/dev/full", "--methods", "natural"],
                                          "--out /dev/full exists and is not a directory"),
    "bench claims --out under a file": Case("bench", ["claims", "--methods", "natural", "--out", "{s}/notes.txt/x",
                                                      "--runs-dir", "{t}/runs"], "{s}/notes.txt is not a directory"),
    "bench claims --threads 0": Case("bench", ["claims", "--threads", "0", "--methods", "natural", "--out", "{t}/o"],
                                     "--threads must be >= 1 (got 0)"),
    "bench claims --standard-queries 0": Case("bench", ["claims", "--standard-queries", "0", "--methods", "natural",
                                                     "--out", "{t}/o", "--runs-dir", "{t}/runs"],
                                            "--standard-queries must be >= 1 (got 0)"),
    "bench compare --eval-attacks typo": Case("bench", ["compare", "--eval-attacks", "apgd", "--out", "{t}/o"],
                                              "argument --eval-attacks: invalid choice: 'apgd'"),
    "bench steps --device banana": Case("bench", ["steps", "--device", "banana"], "--device 'banana' is not a device"),
    "bench steps --reps 1.5": Case("bench", ["steps", "--reps", "1.5"], "argument --reps: invalid whole number value"),
    # ---------------------------------------------------------------- warnings: the run goes on
    "warning: --eps 1.5": Case("train", [*NATURAL, "--eps", "1.5", "--out", "{t}/run"],
                               "--eps 1.5 is more than half the [0, 1] pixel range", warning=True),
    "warning: --train-size above the dataset's": Case(
        "train", [*NATURAL, "--train-size", "10000000", "--out", "{t}/run"],
        "--train-size 10000000 is more than fashion_mnist's 200 training images less the 50 held out", warning=True),
    "warning: --lr 0": Case("train", [*NATURAL, "--lr", "0", "--out", "{t}/run"], "--lr 0: the weights never change",
                            warning=True),
    "warning: eval --eps 1.5": Case("eval", ["{s}/s.safetensors", "--eps", "1.5", "--steps", "1", "--diag-size", "0",
                                             "--out", "{t}/run/r.json"], "--eps 1.5 is more than half", warning=True),
    "warning: eval --test-size above the split": Case("eval", ["{s}/s.safetensors", "--test-size", "100000", "--steps",
                                                               "1", "--diag-size", "0", "--out", "{t}/run/r.json"],
                                                      "--test-size 100000 is more than the 200 images of fashion_mnist/test",
                                                      warning=True),
    "warning: resnet18 at 8x8": Case("train", ["--method", "natural", "--dataset", "imagefolder", "--data-dir",
                                               "{s}/folder", "--resolution", "8", "--student", "resnet18", "--out",
                                               "{t}/run", "--monitor-size", "6", "--test-size", "6", "--epochs", "1",
                                               "--eval-steps", "1", "--monitor-steps", "1", "--no-progress"],
                                     "see a 1x1 feature map", warning=True),
}


# --------------------------------------------------------------------------- the shared inputs
def _checkpoint(path: Path, channels=1, side=28, **sidecar_edits) -> None:
    """A cnn_small checkpoint (untrained: these rows test what happens around the model) whose run config points at
    the tiny Fashion-MNIST copy beside it, so an evaluation of it reads 200 test images."""
    model = create_model("cnn_small", 10, channels, (0.3,) * channels, (0.3,) * channels, side)
    config = {"dataset": "fashion_mnist", "data_dir": str(path.parent / "fm"), "eps": 0.1, "norm": "Linf"}
    save_model(path, model, {"config": config})
    if sidecar_edits:  # a sidecar that is valid JSON and keeps the weights' sha256, but describes another model
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["model"].update(sidecar_edits)
        path.with_suffix(".json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    s = tmp_path_factory.mktemp("inputs")
    write_fashion_mnist(s / "fm", n=200)
    write_image_folder(s / "folder", per_class=6)
    _checkpoint(s / "s.safetensors")
    _checkpoint(s / "rgb.safetensors", channels=3, side=32)
    _checkpoint(s / "five.safetensors", num_classes=5)
    _checkpoint(s / "wide.safetensors", feature_dim=256)
    _checkpoint(s / "swapped.safetensors")
    (s / "swapped.json").write_text(json.dumps({"suite": "quick", "robust_acc": 0.5}))  # an eval result in its place
    (s / "notes.txt").write_text("my notes\n")
    for folder, name in (("has_final", "final.safetensors"), ("has_metrics", "metrics.jsonl"),
                         ("has_last", "last.json"), ("has_report", "report.json"),
                         ("has_events", "events.out.tfevents.1.host"), ("has_demo", "demo.json")):
        (s / folder).mkdir()
        (s / folder / name).write_text("keep me\n")
    (s / "has_state" / "state").mkdir(parents=True)
    (s / "has_state" / "state" / "step-000000001.json").write_text("{}")
    for folder, text in (("has_run", json.dumps({"method": "natural"})),
                         ("resume_edited", json.dumps({"method": "natural", "epochs": "three"})),
                         ("resume_damaged", '{"method": "natural", '),
                         ("has_demo_natural/natural", json.dumps({"method": "natural"}))):
        (s / folder).mkdir(parents=True)
        (s / folder / "config.json").write_text(text)
    return s


def snapshot(*roots: Path) -> dict:
    """Every path under ``roots`` -> sha256 of a file's bytes, or "dir"."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_in_process(cli: str, argv: list[str], capsys) -> tuple[int, list[str]]:
    main = importlib.import_module(CLIS[cli]).main
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


def expand(text: str, s: Path, t: Path) -> str:
    return text.replace("{s}", str(s)).replace("{t}", str(t))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, inputs, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    for var in ("RRM_FAST_DEBUG", "RRM_FAST_TRACEBACK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    for fname, content in case.files.items():
        (tmp_path / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(inputs, tmp_path)
    rc, err = run_in_process(case.cli, [expand(a, inputs, tmp_path) for a in case.argv], capsys)
    says = expand(case.says, inputs, tmp_path)
    assert not any("Traceback" in line for line in err), err
    if case.warning:
        assert rc == 0 and len(err) == 1 and err[0].startswith("warning: ") and says in err[0], (rc, err)
        after = {p: h for p, h in snapshot(inputs, tmp_path).items() if not p.startswith(str(tmp_path / "run"))}
    else:
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], (rc, err)
        after = snapshot(inputs, tmp_path)
    assert after == before, "files changed, appeared or vanished"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# --------------------------------------------------------------------------- beyond the table
def test_a_run_that_fails_its_start_up_checks_leaves_nothing_and_the_same_out_works(inputs, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc, err = run_in_process("train", [*[expand(a, inputs, tmp_path) for a in NATURAL], "--student", "vgg11",
                                       "--out", out], capsys)
    assert rc == 2 and "vgg11" in err[0] and not (tmp_path / "run").exists()
    rc, err = run_in_process("train", [*[expand(a, inputs, tmp_path) for a in NATURAL], "--out", out], capsys)
    assert rc == 0 and err == [] and (tmp_path / "run" / "report.json").is_file()


def test_the_yaml_alias_bomb_is_refused_in_under_a_second_and_100_mb(tmp_path, capsys):
    """9^9 = 387 million strings if expanded: refused while the node graph is counted."""
    from rrm_fast.train import main
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    main(["--config", str(tmp_path / "warm.yaml")])  # the parser's imports, once
    t0 = time.perf_counter()
    rc = main(["--config", str(path)])
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    try:
        assert main(["--config", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "more than 10000 values once YAML aliases are expanded" in err[-1], err
    assert seconds < 1.0, seconds
    assert peak < 100 * 2**20, peak


@pytest.mark.parametrize("argv, says", [
    (["-m", "rrm_fast.train", "--method", "natural", "--epochz", "3"], "did you mean --epochs?"),
    (["-m", "rrm_fast.train", "--method", "natural", "--device", "banana"], "--device 'banana' is not a device"),
    (["-m", "rrm_fast.info", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_real_processes_exit_2_with_one_line(argv, says):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr


def test_info_says_where_the_data_and_the_teacher_cache_are(tmp_path, capsys, monkeypatch):
    from rrm_fast.info import main
    monkeypatch.setenv("RRM_FAST_CACHE", str(tmp_path / "cache"))
    trained = tmp_path / "cache" / "teachers" / "abc123"
    trained.mkdir(parents=True)
    (trained / "final.safetensors").write_bytes(b"\0" * 2**20)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "/usr/share/datasets/fashion-mnist" in out and "data cifar10" in out and "pass --data-dir" in out
    assert f"{tmp_path / 'cache' / 'teachers'} ($RRM_FAST_CACHE): 1 trained teacher(s), 1.0 MiB" in out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "where each dataset is looked for" in capsys.readouterr().out


def test_rrm_fast_debug_shows_the_traceback(tmp_path):
    for var in ("RRM_FAST_DEBUG", "RRM_FAST_TRACEBACK"):
        r = subprocess.run([sys.executable, "-m", "rrm_fast.train", "--method", "natural", "--epochs", "0"],
                           capture_output=True, text=True, cwd=REPO, env=child_env(**{var: "1"}), timeout=300)
        assert r.returncode != 0 and "Traceback" in r.stderr and "--epochs must be >= 1" in r.stderr, (var, r.stderr)


def test_certify_with_n_1e12_prints_an_estimate_and_refuses_within_30_s(inputs):
    """The issue's command, as a real process: an estimate on stdout, one line on stderr, exit 2, in < 30 s."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "rrm_fast.eval", str(inputs / "s.safetensors"), "--suite", "certify",
                        "--n", "1e12", "--sigma", "0.25"], capture_output=True, text=True, cwd=REPO, env=child_env(),
                       timeout=120)
    seconds = time.perf_counter() - t0
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "more than 12 h" in err[0] and "--allow-long" in err[0], r.stderr
    assert "estimated time:" in r.stdout and "--suite certify on 200 images" in r.stdout, r.stdout
    assert seconds < 30, seconds
    assert not (inputs / "s.eval-certify.json").exists() and not (inputs / "s.eval-certify.partial.json").exists()


def test_a_second_evaluation_keeps_the_first_result_and_says_where(inputs, tmp_path, capsys):
    from rrm_fast.eval import main
    out = tmp_path / "r.json"
    argv = [str(inputs / "s.safetensors"), "--steps", "1", "--diag-size", "0", "--out", str(out)]
    assert main([*argv, "--test-size", "20"]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--test-size", "30"]) == 0
    said = capsys.readouterr().out
    kept = [p for p in tmp_path.iterdir() if p.name not in ("r.json",)]
    assert len(kept) == 1 and f"the earlier result is kept as {kept[0]}" in said, (said, kept)
    assert kept[0].read_bytes() == first and json.loads(out.read_bytes())["n"] == 30
