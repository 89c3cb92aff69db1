"""The one interface every training method implements, and the registry the trainer reads.

A method is one small class with one loss. The trainer calls, per minibatch,
``for _ in range(method.replays): out = method.loss(x, y); backward; method.after_backward(); step``.
A method declares what it needs, so the trainer never asks for a method by name:
``needs_teacher`` (load a frozen teacher; ``check_teacher`` is the one check),
``teacher_outputs`` ({"logits"}, {"features"}), ``needs_sample_index`` (the loaders then hand
``loss`` each sample's dataset index and augmentation: data.SampleIndex; it may be set per
instance from the options), ``default_schedule`` (the learning-rate
schedule of ``--schedule auto``), ``early_stop`` (a stopping policy such as
``RobustDropStop``) and ``compile_conflict()`` (why ``--compile`` cannot run it, if so).
Method-specific options are declared in ``options`` and become CLI flags / config keys.

Two modules: ``student`` is the model itself (or its torch.compile wrapper); attacks,
input-gradient passes and train/eval switches use it. ``train_model`` is what the forward
of the training loss runs through: the same module, or the DistributedDataParallel wrapper
under torchrun, whose backward all-reduces the weight gradients. Attack passes never go
through the wrapper (their backward computes input gradients only, which DDP's reducer
does not expect).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..attacks import PGD, default_step
from ..validation import Range, check_value

METHODS: dict[str, type["Method"]] = {}

# the ranges options declare (Option.bounds), checked with their flags before any data is loaded
NON_NEGATIVE, POSITIVE, FRACTION, AT_LEAST_ONE = Range(ge=0), Range(gt=0), Range(ge=0, le=1), Range(ge=1)


def register(cls):
    METHODS[cls.name] = cls
    return cls


@dataclass
class Option:
    """A method's option: its default, help, type (float, int or str), and the values it may
    take (``bounds``: a Range of numbers; ``choices``: the strings allowed), checked by ``check``."""
    default: Any
    help: str
    type: Callable = float
    bounds: Range | None = None
    choices: tuple | None = None

    def check(self, where: str, value):
        """``value`` as this option's type; ValueError naming ``where`` when it is not one (never str() of a container)."""
        return self.type(check_value(where, value, self.type, bounds=self.bounds, choices=self.choices))


@dataclass
class ThreatModel:
    norm: str = "Linf"
    eps: float = 0.1
    alpha: float | None = None  # PGD step; None -> 2.5 * eps / steps
    steps: int = 10

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else default_step(self.eps, self.steps)


@dataclass(frozen=True)
class RobustDropStop:
    """Early-stop policy: when the held-out robust accuracy falls more than ``drop`` below its
    best, restore the best epoch's weights and stop (catastrophic overfitting of FGSM training)."""
    drop: float


@dataclass
class StepOutput:
    loss: torch.Tensor                  # scalar to backpropagate
    logits: torch.Tensor                # the student's logits on the inputs it was trained on (for train accuracy)
    parts: dict = field(default_factory=dict)  # named loss terms for logging (detached floats or tensors)


class Method:
    name = "base"
    paper = ""
    needs_teacher = False
    teacher_outputs: frozenset = frozenset()
    adversarial = False                 # trains on attacked inputs (used by reports)
    replays = 1                         # Free AT replays each minibatch
    needs_sample_index = False          # loss(x, y, index=SampleIndex): per-sample state (RRM's per-image delta)
    default_schedule = "cosine"         # the learning-rate schedule --schedule auto picks
    early_stop: RobustDropStop | None = None
    options: dict[str, Option] = {}

    def __init__(self, student, teacher=None, threat: ThreatModel | None = None, *, train_model=None, **opts):
        self.check_teacher(teacher is not None)
        self.student = student
        self.train_model = student if train_model is None else train_model
        self.teacher = teacher
        self.threat = threat or ThreatModel()
        for key, opt in self.options.items():
            where = f"--method {self.name}: --{key.replace('_', '-')}"
            setattr(self, key, opt.check(where, opts.pop(key, opt.default)))
        if opts:
            raise ValueError(f"--method {self.name} has no option(s) {sorted(opts)}; it takes {sorted(self.options)}")

    @classmethod
    def check_teacher(cls, has_teacher: bool) -> None:
        """The one "needs a teacher" check (the trainer runs it before loading any data)."""
        if cls.needs_teacher and not has_teacher:
            raise ValueError(f"--method {cls.name} needs a teacher: pass --teacher CKPT (a trained model) or --teacher ARCH")

    def compile_conflict(self) -> str | None:
        """Why torch.compile cannot train this method with these options, or None."""
        return self.compile_conflict_with({key: getattr(self, key) for key in self.options})

    @classmethod
    def compile_conflict_with(cls, options: dict) -> str | None:
        """``compile_conflict`` from option values alone (every option given), so the trainer can ask
        before it builds anything."""
        return None

    @classmethod
    def data_conflict_with(cls, options: dict, ds, norm: str) -> str | None:
        """Why this method with these option values (every option given) cannot train on the
        training set ``ds`` under ``norm``, or None; asked before anything is built (preflight)."""
        return None

    def attack(self, steps=None, **kw) -> PGD:
        t = self.threat
        steps = steps or t.steps
        alpha = kw.pop("alpha", t.alpha if t.alpha is not None else default_step(t.eps, steps))
        return PGD(self.student, eps=t.eps, alpha=alpha, steps=steps, norm=t.norm, **kw)

    @torch.no_grad()
    def teacher_forward(self, x):
        """The frozen teacher's (logits, phi) on x, computing only what the method declared."""
        want_feats = "features" in self.teacher_outputs
        if want_feats:
            return self.teacher(x, return_features=True)
        return self.teacher(x), None

    def loss(self, x, y) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_backward(self) -> None:
        """Called after each backward, before the optimizer step (Free AT updates delta here)."""

    def epochs_for(self, epochs: int) -> int:
        """Epoch count the trainer runs for a requested budget (Free AT divides by its replays)."""
        return epochs

    def state_dict(self) -> dict:
        """State carried across minibatches that a resumed run needs (tensors, numbers,
        nested dicts/lists); stateless methods have none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (tensors already on the run's device)."""
        if state:
            raise ValueError(f"--method {self.name} keeps no state but the checkpoint holds {sorted(state)}")
