"""From pydantic's validation errors to one line per parameter problem.

Each line starts with the parameter's full dotted key and says what the key accepts, in
words derived from the schema's own types, ranges and choices (``a positive integer``,
``a number in (0, 1)``, ``one of 'auto', 'on', 'off'``), with advice where YAML typed a
value differently from what was meant, and, for an unknown key, the closest known one
("did you mean train.epochs?"), in any namespace. The schema itself is
``oct_vae.framework.params``.
"""

from __future__ import annotations

import difflib
import functools
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo


class ParameterError(ValueError):
    """Some parameters are unknown, missing, of the wrong type or out of range.

    Attributes:
        problems: One line per problem, each starting with the full key.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = [
            f"{len(self.problems)} parameter problem(s); fix them in "
            "conf/<env>/parameters*.yml or in --params:",
            *(f"  - {p}" for p in self.problems),
        ]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Words:
    """The accepted values in words, where the type and its range do not say it well
    (metadata of an ``Annotated`` type; pydantic ignores it)."""

    text: str


def explain(
    error: ValidationError,
    model: type[BaseModel],
    root: type[BaseModel],
    prefix: str = "",
    moved: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """One line per problem of ``error``, by the dotted key it is about.

    Args:
        error: What ``model.model_validate`` raised.
        model: The validated schema.
        root: The schema of every parameter, searched for the key an unknown one meant.
        prefix: The dotted key of ``model`` in ``root`` plus a dot (``"train."``); ``""``
            for ``root`` itself.
        moved: Where keys of earlier versions went, by old dotted key.
    """
    problems: dict[str, str] = {}  # one line per key, even for a union's several errors
    for item in error.errors():
        owner, path, field = _locate(model, item["loc"])
        key = prefix + ".".join(path)
        if item["type"] == "extra_forbidden":
            where = f"{key}." if path else prefix
            name = str(item["loc"][-1])
            line = _unknown(name, item["input"], where, list(owner.model_fields), root, moved)
            problems.setdefault(where + name, line)
        else:
            problems.setdefault(key, _problem(key, item, field))
    return problems


def _locate(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, list[str], Any]:
    """The model that owns the field at ``loc``, the field's path and its ``FieldInfo``
    (a union adds the name of its member to ``loc``: it is dropped)."""
    owner, path, field = model, [], None
    for i, part in enumerate(loc):
        if field is not None or part not in owner.model_fields:
            break
        path.append(part)
        info = owner.model_fields[part]
        if not _is_model(info.annotation) or i == len(loc) - 1:
            field = info
        else:
            owner = info.annotation
    return owner, path, field


def _problem(key: str, error: Mapping[str, Any], field: FieldInfo | None) -> str:
    if field is None:  # not expected: every error but an unknown key names a field
        return f"{key or 'the parameters'}: {error['msg']}"
    section = field.annotation if _is_model(field.annotation) else None
    if error["type"] == "missing":
        return f"{key} is missing" if section else f"{key} is missing: must be {allowed(field)}"
    value = error["input"]
    if section:
        return f"{key}={shown(value)}: must be a mapping of {', '.join(section.model_fields)}"
    return f"{key}={shown(value)}: must be {allowed(field)}{_hint(key, value, field)}"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# ------------------------------------------------------------- what a field accepts


def allowed(field: FieldInfo) -> str:
    """The values a field accepts, in words, from its type: ``a positive integer``,
    ``null or a number in (0, 1)``, ``one of 'auto', 'on', 'off'``..."""
    words = [m.text for m in field.metadata if isinstance(m, Words)]
    if words:
        return words[0]
    parts = [_leaf_words(t, meta) for t, meta in _leaves(field.rebuild_annotation())]
    if any(p.startswith("a number") for p in parts):  # int | float: an integer is a number
        parts = [p for p in parts if "integer" not in p]
    return " or ".join(sorted(parts, key=lambda p: p != "null"))


def _leaves(annotation: Any, meta: tuple[Any, ...] = ()) -> list[tuple[Any, tuple[Any, ...]]]:
    """The member types of an annotation, each with the metadata that applies to it."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *more = get_args(annotation)
        flat = [m for x in more for m in (x.metadata if isinstance(x, FieldInfo) else [x])]
        return _leaves(base, (*meta, *flat))
    if origin in (Union, types.UnionType):
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg, meta)]
    return [(annotation, meta)]


def _leaf_words(kind: Any, meta: tuple[Any, ...]) -> str:
    words = [m.text for m in meta if isinstance(m, Words)]
    if words:
        return words[0]
    if get_origin(kind) is Literal:
        options = ", ".join(repr(o) for o in get_args(kind))
        return options if len(get_args(kind)) == 1 else f"one of {options}"
    simple = {type(None): "null", bool: "true or false", str: "a non-empty string"}
    if kind in simple:
        return simple[kind]
    bound = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in meta
             if isinstance(m, (at.Ge, at.Gt, at.Le, at.Lt))}
    return _integer_words(bound) if kind is int else _number_words(bound)


def _integer_words(bound: dict[str, int]) -> str:
    low = bound.get("Ge", bound["Gt"] + 1 if "Gt" in bound else None)
    high = bound.get("Le", bound["Lt"] - 1 if "Lt" in bound else None)
    if high is not None:
        return f"an integer in [{low}, {high}]"
    if low is None:
        return "an integer"
    return "a positive integer" if low == 1 else f"an integer >= {low}"


def _number_words(bound: dict[str, float]) -> str:
    low = ("(", bound["Gt"]) if "Gt" in bound else ("[", bound.get("Ge"))
    high = (")", bound["Lt"]) if "Lt" in bound else ("]", bound.get("Le"))
    if low[1] is None and high[1] is None:
        return "a number"
    if high[1] is None:
        return f"a number {'>' if low[0] == '(' else '>='} {low[1]:g}"
    if low[1] is None:
        return f"a number {'<' if high[0] == ')' else '<='} {high[1]:g}"
    return f"a number in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"


@functools.cache
def _adapter(field: FieldInfo) -> TypeAdapter:
    return TypeAdapter(field.rebuild_annotation())


def accepts(field: FieldInfo, value: Any) -> bool:
    """Whether ``field`` takes ``value``."""
    try:
        _adapter(field).validate_python(value)
    except ValidationError:
        return False
    return True


def _hint(key: str, value: Any, field: FieldInfo) -> str:
    """How to write a value that YAML typed differently from what was meant."""
    if isinstance(value, (bool, int, float)):
        # YAML reads on/off/yes/no as booleans and digits as numbers.
        word = {True: "on", False: "off"}.get(value) if isinstance(value, bool) else str(value)
        if accepts(field, word):
            return f" (to pass the string {word!r}, quote it: --params '{key}=\"{word}\"')"
    takes_text = any(k is str or get_origin(k) is Literal
                     for k, _ in _leaves(field.rebuild_annotation()))
    if isinstance(value, str) and not takes_text:
        try:
            float(value)
        except ValueError:
            return ""
        return " (a string: write the number without quotes)"
    return ""


# ------------------------------------------------------------------ unknown keys


def _unknown(
    key: str, value: Any, prefix: str, known: list[str], root: type[BaseModel],
    moved: Mapping[str, str] | None,
) -> str:
    full = f"{prefix}{key}"
    line = f"{full}={shown(value)}: unknown parameter"
    if moved and full in moved:
        return f"{line}; it is now {moved[full]}"
    guess = _suggest(key, prefix, known, root)
    where = f"{prefix[:-1]} takes" if prefix else "the top level takes"
    return f"{line}; {guess}{where}: {', '.join(known)}"


def _suggest(key: str, prefix: str, known: list[str], root: type[BaseModel]) -> str:
    """'did you mean train.epochs? ' or '': the key elsewhere, else the closest one here."""
    elsewhere = [p if "." in p else f"{p} (top level)" for p in _paths(root, key)]
    if not elsewhere:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        elsewhere = [f"{prefix}{c}" for c in close]
    return f"did you mean {' or '.join(elsewhere)}? " if elsewhere else ""


def _paths(model: type[BaseModel], key: str, prefix: str = "") -> list[str]:
    """The dotted keys of every field named ``key`` in ``model``, its own first."""
    found = []
    for name, field in model.model_fields.items():
        if name == key:
            found.append(prefix + name)
        if _is_model(field.annotation):
            found += _paths(field.annotation, key, f"{prefix}{name}.")
    return found


def shown(value: Any) -> str:
    """``value`` for a message: its repr (shortened), with its type unless a string."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, str) else text
