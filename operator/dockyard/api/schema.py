"""One source of truth for the API: typed models that also describe their own schema.

Each kind's spec and status are frozen dataclasses. Field metadata (`doc`, bounds,
patterns, enums) and class-level rules feed two consumers:

* `openapi(cls)` turns a model into the structural OpenAPI v3 schema that goes into the
  CRD (`make crds`), with defaults and CEL `x-kubernetes-validations`;
* `parse(cls, data)` turns the raw dict of a custom resource into the model, applying the
  same defaults and checks, so the operator and `dockyard render` reject exactly what the
  API server would, with the field named in the error.

A `Rule` carries a CEL expression for the API server and the equivalent Python predicate
for the operator; the tests evaluate both on the same inputs so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, NewType, TypeVar, get_args, get_origin

import re2  # type: ignore[import-untyped]

from dockyard.api import cron_grammar

Quantity = NewType("Quantity", str)
"""A non-negative Kubernetes resource quantity written as a string: `20Gi`, `500M`, `1.5Ti`."""

Int64 = NewType("Int64", int)
"""An integer that may exceed 32 bits (byte counts): `format: int64` in the schema."""

Raw = NewType("Raw", dict[str, Any])
"""A Kubernetes sub-object passed through untouched (resources, affinity, tolerations)."""

QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
)
CRON_PATTERN = cron_grammar.SCHEDULE_PATTERN
"""A schedule `dockyard.cron` reads: five fields in their ranges, or a macro (see cron_grammar)."""
CRON_BACKWARDS_PATTERN = cron_grammar.BACKWARDS_PATTERN
"""Found in a schedule that has a range running backwards (`20-10`), which `dockyard.cron` refuses."""
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
"""A duration such as `90s`, `30m`, `1h30m`."""
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Bounds. The API server estimates the cost of each CEL rule from the largest value a field can
# hold; an unbounded string is assumed to fill a whole request (3 MiB), and a CRD whose rules'
# estimates exceed the budget is refused. Every string, list and map of a spec is bounded.
QUANTITY_MAX_LENGTH = 64
"""Quantities: `9223372036854775807` is 19 characters; 64 leaves room for any sane notation."""
DURATION_MAX_LENGTH = 64
CRON_MAX_LENGTH = 128
DNS_LABEL: dict[str, Any] = {"pattern": DNS_LABEL_PATTERN, "max_length": 63}
"""A DNS label (RFC 1123): namespaces, Registry names."""
DNS_SUBDOMAIN: dict[str, Any] = {"pattern": DNS_SUBDOMAIN_PATTERN, "max_length": 253}
"""A DNS subdomain (RFC 1123): Secret names, host names."""
NAME_MAX_LENGTH = 253
"""Names of Kubernetes objects (StorageClass, IngressClass, PriorityClass) and Secret keys."""
ANNOTATIONS: dict[str, Any] = {"max_properties": 64, "item_max_length": 4096}
"""Annotations the user adds to a child object: at most 64, values up to 4 KiB each."""


class SpecError(ValueError):
    """A custom resource that the API contract does not accept; `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclasses.dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for admission, the same rule in Python for the operator.

    `transition` rules compare the object to its previous version (`oldSelf` in CEL);
    their Python predicate receives `(new, old)`.
    """

    cel: str
    message: str
    check: Callable[..., bool]
    transition: bool = False
    field_path: str = ""
    """The field the error names, relative to the model (`.replicas`); the model itself when empty."""

    def openapi(self) -> dict[str, Any]:
        result = {"rule": self.cel, "message": self.message}
        if self.field_path:
            result["fieldPath"] = self.field_path
        return result


def meta(
    doc: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    pattern: str | None = None,
    max_length: int | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    max_properties: int | None = None,
    item_max_length: int | None = None,
    item_pattern: str | None = None,
    check: Callable[[str], str | None] | None = None,
    item_check: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Field metadata for `dataclasses.field(metadata=...)`.

    `max_items` bounds a list, `max_properties` a map; `item_max_length` bounds each string
    item of a list or value of a map, `item_pattern` is the pattern each item must match.

    `check` (`item_check` for each item of a list) is the parser of the engine that reads the
    string: it returns why the value cannot be used, or None. It runs in `parse` only, after the
    schema's pattern and bounds: it is for what a schema pattern cannot express (whether RE2
    compiles a user's regex), so the operator reports the field instead of a run failing on it.
    """
    return {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "pattern": pattern,
        "maxLength": max_length,
        "minItems": min_items,
        "maxItems": max_items,
        "maxProperties": max_properties,
        "itemMaxLength": item_max_length,
        "itemPattern": item_pattern,
        "check": check,
        "itemCheck": item_check,
    }


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def cel_string(text: str) -> str:
    """A Python string as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Model:
    """Base of every API model: frozen dataclasses with camelCase wire names."""

    RULES: ClassVar[tuple[Rule, ...]] = ()
    DOC: ClassVar[str] = ""


M = TypeVar("M", bound=Model)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


# ----------------------------------------------------------------------------- openapi

def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is Quantity:
        return {"type": "string", "pattern": QUANTITY_PATTERN, "maxLength": QUANTITY_MAX_LENGTH}
    if tp is Raw:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int32"}
    if tp is Int64:
        return {"type": "integer", "format": "int64"}
    origin = get_origin(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin in (list, tuple):
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        return {"type": "array", "items": _type_schema(item)}
    if origin in (dict, Mapping):
        _, value = get_args(tp)
        return {"type": "object", "additionalProperties": _type_schema(value)}
    if isinstance(tp, type) and issubclass(tp, Model):
        return openapi(tp)
    raise TypeError(f"no schema for {tp!r}")


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _to_wire(value: Any) -> Any:
    if isinstance(value, Model):
        return dump(value)
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def openapi(cls: type[Model]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, for the CRD."""
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, optional = _unwrap_optional(hints[field.name])
        schema = _type_schema(tp)
        md = field.metadata
        if md.get("doc"):
            schema["description"] = md["doc"]
        for key in ("minimum", "maximum", "pattern", "maxLength", "minItems", "maxItems", "maxProperties"):
            if md.get(key) is not None:
                schema[key] = md[key]
        if md.get("itemMaxLength") is not None:
            item = schema["items" if schema["type"] == "array" else "additionalProperties"]
            (item["items"] if item["type"] == "array" else item)["maxLength"] = md["itemMaxLength"]
        if md.get("itemPattern") is not None:
            schema["items"]["pattern"] = md["itemPattern"]
        default = _default_of(field)
        if default is dataclasses.MISSING and not optional:
            required.append(camel(field.name))
        elif default is not dataclasses.MISSING and default is not None:
            # A nested model defaults to {}: the API server then applies its own defaults.
            schema["default"] = {} if isinstance(default, Model) else _to_wire(default)
        properties[camel(field.name)] = schema
    result: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.DOC:
        result["description"] = cls.DOC
    if required:
        result["required"] = required
    if cls.RULES:
        result["x-kubernetes-validations"] = [rule.openapi() for rule in cls.RULES]
    return result


# ----------------------------------------------------------------------------- parsing

def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern)


def pattern_matches(pattern: str, value: str) -> bool:
    """A schema `pattern` as the API server applies it, with RE2: a search where `$` ends the text,
    `\\s` and `\\d` are ASCII, and the time is linear in the value whatever the pattern."""
    return _compiled(pattern).search(value) is not None


def _parse_value(tp: Any, value: Any, path: str, md: Mapping[str, Any]) -> Any:  # noqa: C901  one case per schema type
    if tp is Raw:
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, not {_kind(value)}")
        return value
    if tp is Quantity or tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"must be a string, not {_kind(value)}")
        pattern = QUANTITY_PATTERN if tp is Quantity else md.get("pattern")
        if pattern and not pattern_matches(pattern, value):
            what = "a quantity such as 20Gi" if tp is Quantity else f"match {pattern}"
            raise SpecError(path, f"{value!r} is not valid: must be {what}")
        max_length = QUANTITY_MAX_LENGTH if tp is Quantity else md.get("maxLength")
        if max_length is not None and len(value) > max_length:
            raise SpecError(path, f"must be at most {max_length} characters")
        check = md.get("check")
        if check is not None:
            error = check(value)
            if error is not None:
                raise SpecError(path, error)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, f"must be a boolean, not {_kind(value)}")
        return value
    if tp is int or tp is Int64:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"must be an integer, not {_kind(value)}")
        if md.get("minimum") is not None and value < md["minimum"]:
            raise SpecError(path, f"must be >= {md['minimum']}, not {value}")
        if md.get("maximum") is not None and value > md["maximum"]:
            raise SpecError(path, f"must be <= {md['maximum']}, not {value}")
        return value
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(str(a) for a in get_args(tp))
            raise SpecError(path, f"{value!r} is not one of: {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, not {_kind(value)}")
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        if md.get("minItems") is not None and len(value) < md["minItems"]:
            raise SpecError(path, f"must have at least {md['minItems']} item(s)")
        if md.get("maxItems") is not None and len(value) > md["maxItems"]:
            raise SpecError(path, f"must have at most {md['maxItems']} item(s)")
        item_md = {"maxLength": md.get("itemMaxLength"), "pattern": md.get("itemPattern"),
                   "check": md.get("itemCheck")}
        return tuple(_parse_value(item, v, f"{path}[{i}]", item_md) for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, not {_kind(value)}")
        if md.get("maxProperties") is not None and len(value) > md["maxProperties"]:
            raise SpecError(path, f"must have at most {md['maxProperties']} entries")
        _, vt = get_args(tp)
        item_md = ({"itemMaxLength": md.get("itemMaxLength")} if get_origin(vt) in (list, tuple)
                   else {"maxLength": md.get("itemMaxLength")})
        return {str(k): _parse_value(vt, v, f"{path}.{k}", item_md) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Model):
        return parse(tp, value, path)
    raise TypeError(f"cannot parse {tp!r}")


def parse(cls: type[M], data: Any, path: str = "spec") -> M:
    """Parse a raw dict into a model, applying defaults and the model's rules."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(path, f"must be an object, not {_kind(data)}")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known = {camel(f.name) for f in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", "unknown field")
    kwargs: dict[str, Any] = {}
    for field in fields:
        wire = camel(field.name)
        tp, optional = _unwrap_optional(hints[field.name])
        fpath = f"{path}.{wire}"
        if wire in data and data[wire] is not None:
            kwargs[field.name] = _parse_value(tp, data[wire], fpath, field.metadata)
        elif _default_of(field) is dataclasses.MISSING and not optional:
            raise SpecError(fpath, "is required")
        elif isinstance(tp, type) and issubclass(tp, Model) and _default_of(field) is not None \
                and _default_of(field) is not dataclasses.MISSING:
            kwargs[field.name] = parse(tp, {}, fpath)  # nested defaults, as the API server does
    obj = cls(**kwargs)
    for rule in cls.RULES:
        if not rule.transition and not rule.check(obj):
            raise SpecError(path + rule.field_path, rule.message)
    return obj


def check_transition(new: Model, old: Model, path: str = "spec") -> None:
    """Apply the transition rules (`oldSelf`) of `new`'s model and its nested models."""
    for rule in type(new).RULES:
        if rule.transition and not rule.check(new, old):
            raise SpecError(path + rule.field_path, rule.message)
    for field in dataclasses.fields(new):  # type: ignore[arg-type]
        a, b = getattr(new, field.name), getattr(old, field.name)
        if isinstance(a, Model) and isinstance(b, Model):
            check_transition(a, b, f"{path}.{camel(field.name)}")


def dump(obj: Model) -> dict[str, Any]:
    """The wire form of a model: camelCase keys, no unset optional fields."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, field.name)
        if value is None:
            continue
        out[camel(field.name)] = _to_wire(value)
    return out
