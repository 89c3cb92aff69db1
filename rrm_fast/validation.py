"""Checking what a user typed: one vocabulary for every CLI and config file.

A value reaches rrm_fast from a flag, a key of a ``--config`` file (YAML or JSON), a resumed
run's ``config.json``, a method option or a library call. Each is checked here against its
declared type (``check_value``: the dataclass annotation, or an ``Option``'s type) and range
(``Range``) before anything uses it, and a bad one becomes one line that names where it came
from, the value and what is expected.

Values are never turned into text with ``str()`` on the way: ``describe`` names a container
by its kind and size and cuts long strings, so reporting a YAML "billion laughs" value costs
nothing. Config files are read by ``read_mapping`` with hard bounds: 1 MiB of text, no
duplicate keys, no tags beyond plain values, and at most ``MAX_CONFIG_NODES`` values after
YAML aliases are expanded (counted on the node graph, before anything is built).
"""
from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path

MAX_TEXT = 4096                  # characters of any string value (names, paths)
MAX_CONFIG_BYTES = 1 << 20       # a config file is a few dozen keys: 1 MiB is far beyond any real one
MAX_CONFIG_NODES = 10_000        # values in a config file with every YAML alias expanded


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``Range(ge=1)`` is ">= 1", ``Range(gt=0, le=1)`` is "in (0, 1]"."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, v) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def broken_by(self, v) -> "Range":
        """The side of the range ``v`` lies beyond (the whole range when it is not a number)."""
        if (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt):
            return Range(ge=self.ge, gt=self.gt)
        if (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt):
            return Range(le=self.le, lt=self.lt)
        return self

    def __str__(self) -> str:
        def num(v):
            return str(v) if isinstance(v, int) else f"{v:g}"

        low = None if self.ge is None and self.gt is None else (
            f"[{num(self.ge)}" if self.gt is None else f"({num(self.gt)}")
        high = None if self.le is None and self.lt is None else (
            f"{num(self.le)}]" if self.lt is None else f"{num(self.lt)})")
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def describe(value) -> str:
    """A short, bounded description of a value for an error message (never str() of a container)."""
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    if isinstance(value, (list, tuple, set)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + f"... ({len(value)} characters)"
    if value is None or isinstance(value, (bool, int, float)):
        text = "null" if value is None else repr(value)
        return text if len(text) <= 60 else f"a {len(text)}-digit number"
    return f"a {type(value).__name__}"


def expected(kind) -> str:
    """What a type annotation accepts, in words."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if args and type(None) in args:  # X | None
        return " or ".join(expected(a) for a in args if a is not type(None)) + " or null"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            dict: "a mapping"}.get(kind, getattr(kind, "__name__", str(kind)))


def _fits(value, kind) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return isinstance(value, str) and value in args
    if args and type(None) in args:
        return value is None or any(_fits(value, a) for a in args if a is not type(None))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is dict:
        return isinstance(value, dict)
    return isinstance(value, kind) if isinstance(kind, type) else False


def check_value(where: str, value, kind, *, bounds: Range | None = None, choices=None):
    """``value`` if it is a ``kind`` (a type annotation) within ``bounds`` and ``choices``; else
    ValueError "WHERE: expected ..., got ..." or "WHERE must be >= 1 (got 0)". Booleans are not
    numbers, whole numbers are not floats with a fraction, strings are at most MAX_TEXT long."""
    if not _fits(value, kind):
        raise ValueError(f"{where}: expected {expected(kind)}, got {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ValueError(f"{where}: a string of at most {MAX_TEXT} characters, got {len(value)}")
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: expected one of {', '.join(map(str, choices))}, got {describe(value)}")
    if bounds is not None and isinstance(value, (int, float)) and value not in bounds:
        got = value if isinstance(value, int) else format(value, "g")
        raise ValueError(f"{where} must be {bounds.broken_by(value)} (got {got})")
    return value


def whole_number(text: str) -> int:
    """argparse type for counts: "100000", "100_000" and "1e5" are 100000; "1.5" is refused."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"expected a whole number, got {text!r}")
    return int(number)


whole_number.__name__ = "whole number"  # what argparse names in "invalid whole number value"


def eps_mistake(eps: float, norm: str, image_shape, flag: str = "--eps") -> str | None:
    """A warning for an attack radius beyond what [0, 1] images allow (the ball then reaches the
    mid-grey image from every image, so nothing can be robust in it), or None."""
    if norm == "Linf" and eps > 0.5:
        hint = f"; did you mean {eps:g}/255 = {eps / 255:.4g}?" if eps >= 1 else ""
        return (f"{flag} {eps:g} is more than half the [0, 1] pixel range: an Linf ball that large reaches mid-grey "
                f"from every image, so no model can be robust in it{hint}")
    radius = 0.5 * math.sqrt(math.prod(image_shape))
    if norm == "L2" and eps > radius:
        return (f"{flag} {eps:g} (L2) is more than {radius:.3g}, half the diagonal of the [0, 1] image cube: the ball "
                "reaches mid-grey from every image, so no model can be robust in it")
    return None


# --------------------------------------------------------------------------- config files
def read_text_file(path, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (a device or FIFO is never read)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} not found")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; pass a YAML or JSON file")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file; pass a YAML or JSON file")
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"{what} {path} is {size} bytes; a config file is at most {limit} bytes")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text; pass a YAML or JSON file") from None


def read_mapping(path, what: str) -> dict:
    """A YAML (.yaml/.yml) or JSON file holding one mapping, read within the bounds above."""
    path = Path(path)
    text = read_text_file(path, what)
    try:
        data = _load_yaml(text) if path.suffix in (".yaml", ".yml") else _load_json(text)
    except RecursionError:
        raise ValueError(f"{what} {path} nests too deeply; a config file is a flat mapping") from None
    except ValueError as e:
        raise ValueError(f"{what} {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a mapping of names to values, not {describe(data)}")
    return data


def _load_json(text: str):
    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {describe(k)}; each key may appear once")
            seen[k] = v
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}); "
                         "a .yaml/.yml file is read as YAML") from None


def _load_yaml(text: str):
    import yaml

    loader = _bounded_loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, {})
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = f"not valid YAML: {e.problem or e.context or 'unreadable'}"
        if "could not determine a constructor" in problem:  # !!python/object and the like: never built
            tag = problem.split("tag ")[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"tag {tag} is refused (a config file holds plain values only)"
        raise ValueError(f"{problem}{where}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML: {' '.join(str(e).split())[:200]}") from None
    finally:
        loader.dispose()


def _count_nodes(node, memo: dict) -> int:
    """Values under ``node`` with every alias expanded (memoised per node, so linear in the
    file); ValueError beyond MAX_CONFIG_NODES or on a recursive alias."""
    import yaml

    key = id(node)
    if key in memo:
        if memo[key] is None:
            raise ValueError(f"a recursive YAML alias (line {node.start_mark.line + 1}); a config holds plain values")
        size = memo[key]
    else:
        memo[key] = None
        size = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            size += _count_nodes(child, memo)
            if size > MAX_CONFIG_NODES:
                break
        memo[key] = size
    if size > MAX_CONFIG_NODES:
        raise ValueError(f"more than {MAX_CONFIG_NODES} values once YAML aliases are expanded (line "
                         f"{node.start_mark.line + 1}); a config file holds a few dozen plain values")
    return size


_LOADER = []


def _bounded_loader_class():
    """yaml.SafeLoader that refuses duplicate keys (built once, on first use: yaml imports lazily)."""
    if _LOADER:
        return _LOADER[0]
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {describe(key_node.value)}; each key may appear once",
                            key_node.start_mark)
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep)

    _LOADER.append(BoundedSafeLoader)
    return BoundedSafeLoader
