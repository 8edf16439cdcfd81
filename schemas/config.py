"""The base of every typed config a user writes (build, train, quality thresholds): strict pydantic models.

    cfg = BuildConfig.from_file("build.yaml")          # JSON or YAML of the model's fields
    cfg = BuildConfig.from_dict({"stride_s": 1})       # a typo or a wrong type raises ConfigError (exit 2)

Rules, the same for every config: frozen; an unknown key is an error (a typo such as ``strid_s`` must not be
dropped silently); no lossy or guessing coercion: ``"0.001"`` is not a float, ``64.5`` is not an int, ``1``
is not a bool. The only conversions allowed are lossless ones: an int where a float is expected, and a JSON or
YAML list where a tuple is expected (files have no tuples). Errors name the key, e.g. ``optim.audio.lr``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from schemas.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or value the model rejects: unknown key, wrong type, out of range (exit 2)."""


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


#: wrap a tuple annotation so that a file's list validates (strict mode accepts only real tuples from Python)
FromList = BeforeValidator(_list_to_tuple)


def tuple_field(tp: Any) -> Any:
    """``Annotated[tp, FromList]``: a tuple-typed field that accepts a list from a JSON/YAML file."""
    return Annotated[tp, FromList]


class StrictConfig(BaseModel):
    """Frozen, extra="forbid", strict pydantic model of finite floats, with ``to_dict``/``from_dict``/``from_file``/
    ``replace``."""

    # allow_inf_nan=False: JSON/YAML/argparse all parse NaN and inf, and a NaN threshold compares False with everything
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def to_dict(self) -> dict:
        """Plain JSON-compatible values (tuples become lists), the form files and manifests hold."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Self:
        """Validate a mapping of field values; raises :class:`ConfigError` naming the first bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe(exc, source or cls.__name__)) from None

    @classmethod
    def from_file(cls, path: Path | str) -> Self:
        """Read a JSON (``.json``) or YAML (``.yaml``/``.yml``, or anything else YAML parses) file of fields."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again (``model_copy(update=)`` would not validate)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        try:
            return type(self).model_validate({**values, **changes})
        except ValidationError as exc:
            raise ConfigError(describe(exc, type(self).__name__)) from None


def read_mapping(path: Path | str) -> dict:
    """A config file's top-level mapping; a missing file, bad syntax or a non-mapping raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError: its message names the line and column
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of settings, not {type(data).__name__}")
    return data


def describe(exc: ValidationError, source: str) -> str:
    """One line naming each bad key: ``build.yaml: strid_s: unknown key; stride_s: input should be a valid number``."""
    by_key: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for err in exc.errors():
        # union members add their type name to the location; drop them so the key reads as in the file
        key = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":  # our own validators: the message already shows the value
            msg = msg.removeprefix("Value error, ")
        else:
            msg = msg[0].lower() + msg[1:]
            value = err.get("input")
            got[key] = f" (got {value!r})" if not isinstance(value, dict) else ""
        if msg not in by_key.setdefault(key, []):
            by_key[key].append(msg)
    parts = [f"{key + ': ' if key else ''}{' or '.join(msgs)}{got.get(key, '')}" for key, msgs in by_key.items()]
    return f"{source}: {'; '.join(parts)}"


def _is_union_tag(part: Any) -> bool:
    text = str(part)
    return isinstance(part, str) and (
        text.startswith(("tuple[", "literal[", "function-", "dict[", "list["))
        or text in ("float", "int", "str", "bool", "none")
    )


# ------------------------------------------------------------------- command-line flags from field definitions


def cli_flag(model: type[BaseModel], name: str, prefix: str = "") -> str:
    """The command-line flag of a config field: its ``json_schema_extra["flag"]``, else ``--field-name``
    (``prefix`` goes after the dashes: ``tower-`` gives ``--tower-checkpoint``)."""
    extra = model.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + prefix + name.replace("_", "-")


def _json_object(text: str) -> dict:
    value = json.loads(text)  # a ValueError: argparse says "invalid JSON object value"
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


_json_object.__name__ = "JSON object"


def _flag_type(annotation: Any) -> dict:
    """argparse keywords that parse a flag's text into ``annotation`` without lossy coercion ("64.5" is no int)."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return {"choices": args}
    if type(None) in args:  # X | None: "none" gives None
        inner = next(a for a in args if a is not type(None))
        parse = _flag_type(inner).get("type", str)

        def optional(text: str):
            return None if text.lower() == "none" else parse(text)

        optional.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid X value"
        return {"type": optional}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a nested config: a JSON object
        return {"type": _json_object, "metavar": "JSON"}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line flag for a field of type {annotation!r}")


def add_config_flags(parser, model: type[BaseModel], names=None, *, dest_prefix: str = "", flag_prefix: str = "",
                     show_default: bool = True) -> None:  # fmt: skip
    """One argparse flag per field of ``model``: its name (:func:`cli_flag`), type, help and default all come
    from the field definition. A flag not given leaves no attribute on the namespace (``argparse.SUPPRESS``), so
    values from a config file or a preset are overridden only by the flags a user typed (:func:`given_flags`).
    A nested config field takes a JSON object; ``X | None`` takes ``none``. ``parser`` may be an argument group.
    """
    for name in names or model.model_fields:
        f = model.model_fields[name]
        kw = _flag_type(f.annotation)
        default = f.get_default(call_default_factory=True)
        shown = "none" if default is None else default.model_dump() if isinstance(default, BaseModel) else default
        help_text = f"{f.description} (default: {shown})" if show_default else f.description
        if "action" not in kw and "choices" not in kw:
            kw.setdefault("metavar", name.split("_")[-1].upper())
        parser.add_argument(cli_flag(model, name, flag_prefix), dest=dest_prefix + name, default=argparse.SUPPRESS,
                            help=(help_text or "").replace("%", "%%"), **kw)  # fmt: skip


def given_flags(args: argparse.Namespace, model: type[BaseModel], dest_prefix: str = "") -> dict:
    """The ``model`` fields whose flags the user typed, with their parsed values."""
    return {n: getattr(args, dest_prefix + n) for n in model.model_fields if hasattr(args, dest_prefix + n)}


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested mappings (``filters``, ``tower``) are merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
