"""The training configuration: one dataclass, and everything derived from it.

``TrainConfig`` is the single source of truth. From its fields come
  * the command-line flags: ``--batch-size`` for ``batch_size``, with the field's type,
    choices, help and default (booleans get ``--amp`` / ``--no-amp``);
  * the keys of ``--config`` files (YAML or JSON; the same names, ``-`` or ``_``), type-checked
    by the same parser as the flags;
  * the settings a resumed run may change (``RESUME_MAY_CHANGE``: fields marked
    ``may_change_on_resume``; they do not alter what is computed);
  * the ``config.json`` every run writes (``dataclasses.asdict``).
Method options are not fields: each method declares them (``Method.options``), they become
one flag each and are kept in ``method_options``. ``validate_config`` is the one place that
checks a configuration's values, for the CLI and for library callers alike.

Parsing and type checking use jsonargparse (argparse-compatible; typed values from the
annotations, including ``float | None`` and ``Literal`` choices; the config file checked by
the same rules as the flags; errors as exceptions, reported here in one line).
"""
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data import DATASETS, FOLDER_DATASETS, LOADER_KINDS
from ..eval.attack_sets import ATTACK_SETS, DEFAULT_ATTACKS
from ..methods import METHODS
from ..models import ARCHS
from ..runtime import check_device_name
from ..validation import Range, check_value, describe, read_mapping

SCHEDULES = ("auto", "cosine", "cyclic", "constant")
AUGMENTS = ("auto", "none", "crop", "flip", "crop+flip")
COUNT, NON_NEGATIVE = Range(ge=1), Range(ge=0)  # sizes and intervals; weights, rates, radii
REPEATS = Range(ge=1, le=100_000)  # epochs, steps, restarts: beyond this a typo, not a plan


def _field(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING, flag: bool = True,
           may_change_on_resume: bool = False, choices=None, bounds: Range | None = None):
    """A TrainConfig field with what its flag needs: help text, whether it is a flag, whether
    a resumed run may change it, registry-backed choices (a callable, read when the parser
    is built, so methods registered later are listed) and the range of its values."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "flag": flag, "may_change_on_resume": may_change_on_resume, "choices": choices,
                           "bounds": bounds})


@dataclass
class TrainConfig:
    method: str = _field("natural", "training method (none given: the built-in demo)", choices=lambda: sorted(METHODS))
    student: str = _field("cnn_small", f"student architecture ({', '.join(ARCHS)})")
    teacher: str | None = _field(None, "teacher checkpoint (.safetensors, or .pt/.pth with --teacher-arch) or an "
                                       "architecture to train a teacher for")
    teacher_arch: str | None = _field(None, "architecture of a teacher file from elsewhere (RobustBench, timm, "
                                            "torchvision state dicts); weights are mapped onto it")
    teacher_method: str = _field("fast_at", "method that trains an architecture-named teacher")
    teacher_epochs: int = _field(4, "epochs of an architecture-named teacher", bounds=REPEATS)
    head_init: Literal["random", "teacher"] = _field("random", "teacher: start the student's classifier as a copy "
                                                               "of the teacher's")
    dataset: Literal[DATASETS + FOLDER_DATASETS] = _field("fashion_mnist", "imagefolder: any DIR/train/<class>/*.jpg "
                                                                           "tree; restricted_imagenet: ImageNet's 9 "
                                                                           "super-classes (pass --data-dir)")
    data_dir: str | None = _field(None, "the dataset's folder")
    resolution: int | None = _field(None, "side of the square images of a folder dataset (224 when not given)",
                                   bounds=Range(ge=1, le=8192))
    augment: Literal[AUGMENTS] = _field("auto", "train-time augmentation, the same for a teacher trained here: auto = the "
                                                "dataset's own (CIFAR crop+flip, Fashion-MNIST none); crop = zero-pad and "
                                                "crop back (the dataset's padding, else 2 pixels); flip = mirror half")
    epochs: int = _field(2, "training epochs", bounds=REPEATS)
    batch_size: int = _field(128, "the GLOBAL batch: under torchrun each of N processes takes batch-size / N",
                             bounds=COUNT)
    lr: float = _field(0.05, "SGD learning rate (peak of the schedule)", bounds=NON_NEGATIVE)
    momentum: float = _field(0.9, "SGD momentum", bounds=Range(ge=0, le=1))
    weight_decay: float = _field(5e-4, "SGD weight decay", bounds=NON_NEGATIVE)
    schedule: Literal[SCHEDULES] = _field("auto", "learning-rate schedule; auto: the method's own (cyclic for "
                                                  "fast_at, else cosine)")
    eps: float = _field(0.1, "attack radius in pixel units (images are in [0, 1])", bounds=NON_NEGATIVE)
    norm: Literal["Linf", "L2"] = _field("Linf", "threat model")
    alpha: float | None = _field(None, "training PGD step (2.5*eps/steps when not given)", bounds=NON_NEGATIVE)
    attack_steps: int = _field(7, "training PGD steps (pgd_at, trades, ...)", bounds=REPEATS)
    eval_attacks: Literal[ATTACK_SETS] = _field(DEFAULT_ATTACKS, "attack set of the final test figure: the per-sample "
                                                                 "worst case over a CE and a margin attack "
                                                                 "(docs/evaluation.md); pgd-ce is CE-only PGD, a quick "
                                                                 "check that soft logits fool")
    eval_steps: int | None = _field(None, "steps (PGD) or iterations (APGD) of the final test attacks; default the "
                                          "set's (50 for the APGD sets, 20 for PGD)", bounds=REPEATS)
    eval_restarts: int = _field(1, "random restarts of each final test attack", bounds=REPEATS)
    standard_size: int = _field(0, "also run the standard suite (APGD-CE-100 -> APGD-T-100x9 -> Square) on the first N "
                                   "test samples, beside the final figure (0: no)", bounds=NON_NEGATIVE)
    standard_queries: int = _field(5000, "Square queries per sample of that standard suite", bounds=COUNT)
    monitor_size: int = _field(1000, "held-out TRAIN samples for the per-epoch check", bounds=COUNT)
    monitor_attacks: Literal[ATTACK_SETS] = _field("pgd-ce+dlr", "attack set of the per-epoch held-out check (CE and "
                                                                 "a margin attack: it drives early stopping)")
    monitor_steps: int = _field(10, "attack steps of the per-epoch held-out check", bounds=REPEATS)
    amp: bool = _field(False, "mixed precision: fp16+GradScaler or bf16 on CUDA; bf16 on a CPU with native bf16 instructions")
    channels_last: bool = _field(True, "channels-last memory format")
    compile: bool = _field(False, "torch.compile the student")
    device: str = _field("auto", "auto, cpu, cuda or cuda:N", may_change_on_resume=True)
    seed: int = _field(0, "seed of the model, the data order and the attacks", bounds=Range(ge=0, lt=2**63))
    out: str | None = _field(None, "run directory (runs/<time>-<method>-<arch> when not given)", may_change_on_resume=True)
    train_size: int | None = _field(None, "train on the first N training samples (quick runs)", bounds=COUNT)
    test_size: int | None = _field(None, "evaluate on the first N test samples (quick runs)", bounds=COUNT)
    loader: Literal[LOADER_KINDS] = _field("auto", "batch loader", may_change_on_resume=True)
    checkpoint_every: int = _field(200, "save a training state every N minibatches, besides each epoch end",
                                   may_change_on_resume=True, bounds=COUNT)
    log_every: int = _field(50, "TensorBoard per-step scalars every N minibatches", may_change_on_resume=True,
                            bounds=COUNT)
    method_options: dict = _field(default_factory=dict, flag=False)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Settings a resumed run may change: they do not alter what is computed (the loaders produce
# the same batches; the device is the same hardware's; checkpoints and logs are bookkeeping).
RESUME_MAY_CHANGE = tuple(name for name, f in FIELDS.items() if f.metadata["may_change_on_resume"])


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def method_option_specs() -> dict:
    """Every method option once (options several methods declare share one flag): key -> (method, Option)."""
    specs = {}
    for cls in METHODS.values():
        for key, opt in cls.options.items():
            specs.setdefault(key, (cls.name, opt))
    clash = set(specs) & set(FIELDS)
    if clash:
        raise RuntimeError(f"method options {sorted(clash)} clash with TrainConfig fields")
    return specs


# --------------------------------------------------------------------------- validation
def validate_config(cfg: TrainConfig) -> None:
    """The one check of a configuration's values, whatever they came from (flags, a --config
    file, a resumed run's config.json, a library call): every field against its annotated type
    and declared range, the method's options against theirs, then the settings that belong
    together. ValueError, one line naming the flag, the value and what it must be."""
    for name, f in FIELDS.items():
        if name != "method_options":
            check_value(flag_name(name), getattr(cfg, name), f.type, bounds=f.metadata["bounds"])
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; choose one of: {', '.join(sorted(METHODS))}")
    for key in ("student", "teacher_arch"):
        value = getattr(cfg, key)
        if value is not None and value not in ARCHS:
            raise ValueError(f"unknown {flag_name(key)} {describe(value)}; choose one of: {', '.join(ARCHS)}")
    if cfg.teacher in ARCHS:
        check_teacher_method(cfg.teacher_method)
    check_device_name(cfg.device)
    check_method_options(cfg)
    if cfg.teacher_arch is not None and cfg.teacher in ARCHS:
        raise ValueError(f"--teacher-arch names the architecture of a teacher FILE; --teacher {cfg.teacher} already "
                         "names an architecture to train (drop one of them)")
    METHODS[cfg.method].check_teacher(cfg.teacher is not None)  # before any data is loaded


def check_teacher_method(name: str) -> None:
    """--teacher-method: a method that trains without a teacher (it trains the teacher)."""
    if name not in METHODS or METHODS[name].needs_teacher:
        raise ValueError(f"--teacher-method {describe(name)} must be a method that trains without a teacher, e.g. "
                         "fast_at, pgd_at, natural, gaussian_aug")


def check_method_options(cfg: TrainConfig) -> None:
    """method_options: a mapping of the method's own options, each of its declared type and range."""
    options = check_value("method_options", cfg.method_options, dict)
    known = METHODS[cfg.method].options
    extra = sorted(str(k)[:60] for k in options if k not in known)
    if extra:
        raise ValueError(f"--method {cfg.method} takes no option(s) {extra[:5]}; it takes {sorted(known) or 'none'}")
    for key, value in options.items():
        known[key].check(f"--method {cfg.method}: {flag_name(key)}", value)


# --------------------------------------------------------------------------- flags
def add_config_flags(parser) -> None:
    """One flag per TrainConfig field and one per method option, on a jsonargparse parser."""
    from jsonargparse import ActionYesNo

    for name, f in FIELDS.items():
        if not f.metadata["flag"]:
            continue
        help_text = f.metadata["help"]
        if f.type is bool:
            parser.add_argument(flag_name(name), action=ActionYesNo(no_prefix="no-"), default=f.default, help=help_text)
        elif f.metadata["choices"]:  # a registry's names (methods)
            parser.add_argument(flag_name(name), choices=f.metadata["choices"](), default=f.default, help=help_text)
        else:
            parser.add_argument(flag_name(name), type=f.type, default=f.default, help=help_text)
    # parsed with defaults=False, so a default below only documents the declaring method's value
    for key, (owner, opt) in method_option_specs().items():
        choices = {"choices": opt.choices} if opt.choices else {}
        parser.add_argument(flag_name(key), type=opt.type, default=opt.default, help=f"[{owner}] {opt.help}", **choices)


def parse_error_line(err: Exception) -> str:
    """A jsonargparse error as one line naming the flag: "--epochs: expected int, got two"."""
    text = str(err)
    m = re.match(r'Parser key "([\w.]+)":(.*)', text, re.S)
    if not m:
        return " ".join(text.split())
    flag, detail = flag_name(m.group(1)), m.group(2)
    got = re.search(r"(?:Got value|Given value):\s*(.*)", detail)
    literal = re.search(r"Literal\[(.*?)\]", detail)
    types = re.findall(r"<class '(\w+)'>", detail.split("Given value type")[0])
    if literal:
        expected = "one of " + literal.group(1).replace("'", "")
    elif types:
        expected = " or ".join("null" if t == "NoneType" else t for t in dict.fromkeys(types))
    else:
        return f"{flag}: {' '.join(detail.split())}"
    return f"{flag}: expected {expected}, got {got.group(1).strip() if got else '?'}"


def values_from_flags(given: dict) -> dict:
    """TrainConfig values from the flags given (method options gathered into method_options)."""
    specs = method_option_specs()
    values = {k: v for k, v in given.items() if k in FIELDS}
    options = {k: v for k, v in given.items() if k in specs}
    if options:
        values["method_options"] = options
    return values


def read_config_file(path, parser) -> dict:
    """TrainConfig values from a YAML/JSON file with the flags' keys, checked by the flags' parser.
    The file is read within validation.read_mapping's bounds, and every value must be a single
    value (method_options: a mapping of them) before the parser sees it, so a list or an
    expanded YAML alias never reaches a string conversion."""
    from jsonargparse import ArgumentError

    data = {str(k).replace("-", "_"): v for k, v in read_mapping(path, "--config").items()}
    nested = data.pop("method_options", None) or {}  # as a run's config.json holds them
    if not isinstance(nested, dict):
        raise ValueError(f"--config {path}: method_options must be a mapping of option names to values, "
                         f"not {describe(nested)}")
    unknown = (set(data) - set(FIELDS) - set(method_option_specs())) | (set(nested) - set(method_option_specs()))
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {sorted(str(k)[:60] for k in unknown)[:5]}; the keys are the "
                         "flags' names (see --help)")
    for key, value in [*data.items(), *nested.items()]:
        if isinstance(value, (dict, list)):
            raise ValueError(f"--config {path}: {key}: expected a single value, got {describe(value)}")
    try:  # options are checked like their flags; a top-level key wins over method_options
        checked = parser.parse_object({**nested, **data}, defaults=False).as_dict()
    except ArgumentError as err:
        raise ValueError(f"--config {path}: {parse_error_line(err)}") from None
    return values_from_flags(checked)


def merge(*layers: dict) -> dict:
    """Later layers override earlier ones; method options are merged key by key."""
    out: dict = {}
    for layer in layers:
        options = {**out.get("method_options", {}), **layer.get("method_options", {})}
        out.update(layer)
        out["method_options"] = options
    return out


def config_from_values(values: dict) -> TrainConfig:
    """A TrainConfig keeping only the options its method takes (shared flags belong to several methods)."""
    cfg = TrainConfig(**values)
    if cfg.method in METHODS:
        check_method_options(cfg)
    return cfg


# --------------------------------------------------------------------------- resume
def resume_flags() -> tuple[str, ...]:
    """Flags a --resume may add: the fields a resumed run may change, except --out (--resume names the run)."""
    return tuple(flag_name(k) for k in RESUME_MAY_CHANGE if k != "out")


def config_for_resume(run_dir, given: dict) -> TrainConfig:
    """--resume RUN_DIR: the run's own config.json; only settings in RESUME_MAY_CHANGE may be added."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no config.json there; pass the directory of a run started by "
                         "python -m rrm_fast.train (its --out)")
    extra = [k for k in given if k not in RESUME_MAY_CHANGE or k == "out"]
    if extra:
        raise ValueError(f"--resume continues {run_dir} with its saved settings; drop {flag_name(extra[0])} (only "
                         f"{', '.join(resume_flags())} and --no-progress may be given), or start a new run with another --out")
    values = read_mapping(path, f"--resume {run_dir}:")
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"--resume {run_dir}: config.json has keys this version does not know "
                         f"{sorted(str(k)[:60] for k in unknown)[:5]}")
    cfg = TrainConfig(**{**values, **given, "out": str(run_dir)})
    try:
        validate_config(cfg)
    except ValueError as e:
        raise ValueError(f"--resume {run_dir}: config.json: {e}; the file was edited or is damaged - restore it, "
                         "or start a new run with another --out") from None
    return cfg


def changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """Fields of ``cfg`` that differ from a run's saved config.json, other than RESUME_MAY_CHANGE."""
    now = dataclasses.asdict(cfg)
    return [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
