"""Admission of custom resources as the Kubernetes API server performs it, without a cluster.

The CRDs in crds/ promise that `kubectl apply` rejects bad Registries before the operator ever
sees them. This module replays what the API server does with a create or update request so the
unit tests can hold the CRD (and the operator's own parser) to that promise:

1. prune nulls of non-nullable fields, then apply the schema's structural defaults;
2. report fields the schema does not declare (what `kubectl apply`'s default strict field
   validation does) and drop them, as pruning would;
3. validate against the structural schema with `jsonschema`, after translating the
   Kubernetes extensions (`x-kubernetes-int-or-string`, `nullable`, RE2 `pattern` anchors);
4. evaluate every `x-kubernetes-validations` rule with cel-python, `self` bound to the value of
   the schema node carrying the rule, and `oldSelf` to the old object's value there; a
   transition rule (one that reads `oldSelf`) runs only when the old object has that node.

The Kubernetes quantity library (`quantity`, `isQuantity` and the Quantity member functions) is
implemented here from the Kubernetes grammar, independently of `dockyard.api`, so comparing
this harness with the operator's Python predicates compares two implementations.

`structural_problems` lists what a real API server would refuse in a CRD's schema itself.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

# ----------------------------------------------------------------------------- quantity

_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_MAX_INT64 = 2**63 - 1


def parse_quantity(text: str) -> Fraction:
    """Kubernetes `resource.ParseQuantity`: the exact value, rounded up to 1n, capped at 2^63-1."""
    if not isinstance(text, str) or not text:
        raise ValueError("quantities must match the regular expression")
    i, sign = 0, 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        i = 1
    start = i
    while i < len(text) and text[i].isdigit():
        i += 1
    whole = text[start:i]
    frac = ""
    if i < len(text) and text[i] == ".":
        i += 1
        fstart = i
        while i < len(text) and text[i].isdigit():
            i += 1
        frac = text[fstart:i]
    if not whole and not frac:
        raise ValueError(f"quantity {text!r}: no digits")
    if not (whole + frac).isascii():
        raise ValueError(f"quantity {text!r}: not ASCII digits")
    number = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
    suffix = text[i:]
    if suffix in _BINARY_SI:
        value = number * 2 ** _BINARY_SI[suffix]
    elif suffix in _DECIMAL_SI:
        value = number * Fraction(10) ** _DECIMAL_SI[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE":
        exponent = suffix[1:]
        digits = exponent[1:] if exponent[0] in "+-" else exponent
        if not digits.isdigit() or not digits.isascii():
            raise ValueError(f"quantity {text!r}: bad exponent")
        # Past len(text) + 40 decimal places the value is capped or rounds up to 1n anyway.
        bound = len(text) + 40
        significant = digits.lstrip("0")
        power = int(significant or "0") if len(significant) <= 6 else bound
        power = -power if exponent[0] == "-" else power
        value = number * Fraction(10) ** max(-bound, min(bound, power))
    else:
        raise ValueError(f"quantity {text!r}: unknown suffix {suffix!r}")
    magnitude = min(Fraction(math.ceil(value * 10**9), 10**9), Fraction(_MAX_INT64))
    return sign * magnitude


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A CEL value of the Kubernetes `Quantity` type."""

    value: Fraction

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def _quantity(text: Any) -> Quantity:
    if not isinstance(text, str):
        raise TypeError(f"no such overload: quantity({type(text).__name__})")
    return Quantity(parse_quantity(str(text)))


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        _quantity(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _both(name: str, a: Any, b: Any) -> tuple[Fraction, Fraction]:
    if not isinstance(a, Quantity) or not isinstance(b, Quantity):
        raise TypeError(f"no such overload: {name}({type(a).__name__}, {type(b).__name__})")
    return a.value, b.value


def _compare_to(a: Any, b: Any) -> celtypes.IntType:
    x, y = _both("compareTo", a, b)
    return celtypes.IntType((x > y) - (x < y))


def _is_less_than(a: Any, b: Any) -> celtypes.BoolType:
    x, y = _both("isLessThan", a, b)
    return celtypes.BoolType(x < y)


def _is_greater_than(a: Any, b: Any) -> celtypes.BoolType:
    x, y = _both("isGreaterThan", a, b)
    return celtypes.BoolType(x > y)


def _sign(a: Any) -> celtypes.IntType:
    if not isinstance(a, Quantity):
        raise TypeError("no such overload: sign")
    return celtypes.IntType((a.value > 0) - (a.value < 0))


def _is_integer(a: Any) -> celtypes.BoolType:
    if not isinstance(a, Quantity):
        raise TypeError("no such overload: isInteger")
    return celtypes.BoolType(a.value.denominator == 1 and -(2**63) <= a.value <= _MAX_INT64)


def _as_integer(a: Any) -> celtypes.IntType:
    if not _is_integer(a):
        raise ValueError("cannot convert value to integer")
    return celtypes.IntType(int(a.value))


def _as_approximate_float(a: Any) -> celtypes.DoubleType:
    if not isinstance(a, Quantity):
        raise TypeError("no such overload: asApproximateFloat")
    return celtypes.DoubleType(float(a.value))


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, Quantity) and isinstance(b, Quantity):
        return Quantity(a.value + b.value)
    if isinstance(a, Quantity) and isinstance(b, int):
        return Quantity(a.value + b)
    raise TypeError("no such overload: add")


def _sub(a: Any, b: Any) -> Any:
    if isinstance(a, Quantity) and isinstance(b, Quantity):
        return Quantity(a.value - b.value)
    if isinstance(a, Quantity) and isinstance(b, int):
        return Quantity(a.value - b)
    raise TypeError("no such overload: sub")


KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "compareTo": _compare_to,
    "isLessThan": _is_less_than,
    "isGreaterThan": _is_greater_than,
    "sign": _sign,
    "isInteger": _is_integer,
    "asInteger": _as_integer,
    "asApproximateFloat": _as_approximate_float,
    "add": _add,
    "sub": _sub,
}
"""The parts of the Kubernetes CEL libraries the Dockyard CRDs use, as cel-python functions."""


# ----------------------------------------------------------------------------- CEL

_ENV = celpy.Environment()


@functools.cache
def compile_rule(expression: str) -> celpy.Runner:
    """Compile a CEL expression once; raises `celpy.CELParseError` on a syntax error."""
    return _ENV.program(_ENV.compile(expression), functions=KUBERNETES_FUNCTIONS)


def is_transition_rule(expression: str) -> bool:
    """Whether the rule reads `oldSelf` (ignoring string literals), as the API server decides."""
    code = re.sub(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", "''", expression)
    return re.search(r"\boldSelf\b", code) is not None


def evaluate(expression: str, self_value: Any, old_value: Any = None) -> Any:
    """Evaluate one rule; `oldSelf` is bound only when given. Raises `celpy.CELEvalError`."""
    activation: dict[str, Any] = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return compile_rule(expression).evaluate(activation)


# ----------------------------------------------------------------------------- admission

@dataclasses.dataclass(frozen=True)
class Violation:
    """One reason the API server would refuse the object; `path` as kubectl prints it."""

    path: str
    message: str
    rule: str | None = None
    """The CEL expression that failed, when the violation comes from x-kubernetes-validations."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _child_schema(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    props = schema.get("properties", {})
    if key in props:
        return props[key]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting in place: nulls of non-nullable fields go, defaults fill gaps."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in list(value):
            sub = _child_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable", False) \
                    and "default" not in sub:
                del value[key]
        for key, sub in props.items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = _child_schema(schema, key)
            if sub is not None:
                apply_defaults(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def _unknown_fields(value: Any, schema: dict[str, Any], path: str, out: list[Violation]) -> None:
    """Report and prune fields the schema does not declare."""
    if isinstance(value, dict) and schema.get("type") == "object":
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        has_extra = isinstance(schema.get("additionalProperties"), dict) \
            or schema.get("additionalProperties") is True
        for key in list(value):
            if not path and key == "metadata":
                continue  # ObjectMeta: the API server validates it itself, never by the CRD schema
            sub = _child_schema(schema, key)
            if sub is None:
                if not preserve and not has_extra:
                    out.append(Violation(_join(path, key), "field not declared in schema"))
                    del value[key]
                continue
            _unknown_fields(value[key], sub, _join(path, key), out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _unknown_fields(item, schema["items"], _join(path, i), out)


def _re2_pattern(pattern: str) -> str:
    # RE2 (Go) reads `$` as the end of the text; Python's `$` also matches before a final newline.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


_DROPPED = {"default", "description", "example", "externalDocs", "format", "nullable", "title"}


def to_jsonschema(schema: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as a JSON Schema (draft 4) `jsonschema` can check."""
    out: dict[str, Any] = {}
    for key, val in schema.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in val.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(val, dict):
            out[key] = to_jsonschema(val)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in val]
        elif key == "pattern":
            out[key] = _re2_pattern(val)
        elif key.startswith("x-") or key in _DROPPED:
            continue
        else:
            out[key] = val
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _schema_violations(value: Any, schema: dict[str, Any]) -> Iterator[Violation]:
    validator = jsonschema.Draft4Validator(to_jsonschema(schema))
    for error in validator.iter_errors(value):
        path = ""
        for key in error.absolute_path:
            path = _join(path, key)
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    yield Violation(_join(path, name), "Required value")
        else:
            yield Violation(path, error.message)


def _cel_violations(value: Any, schema: dict[str, Any], old: Any, has_old: bool, path: str,
                    out: list[Violation]) -> None:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", ()):
        expression = rule["rule"]
        transition = is_transition_rule(expression)
        if rule.get("optionalOldSelf"):
            raise NotImplementedError("optionalOldSelf is not supported by this harness")
        if transition and not has_old:
            continue
        where = path + rule.get("fieldPath", "") if path else rule.get("fieldPath", "").lstrip(".")
        try:
            verdict = evaluate(expression, value, old if transition else None)
        except celpy.CELEvalError as error:
            out.append(Violation(where, f"rule evaluation error: {error.args[0]}", expression))
            continue
        if not isinstance(verdict, celtypes.BoolType):
            out.append(Violation(where, f"rule did not evaluate to a bool: {verdict!r}", expression))
        elif not verdict:
            out.append(Violation(where, rule.get("message") or f"failed rule: {expression}", expression))
    if isinstance(value, dict):
        for key, item in value.items():
            sub = _child_schema(schema, key)
            if sub is None:
                continue
            old_has = has_old and isinstance(old, dict) and old.get(key) is not None
            _cel_violations(item, sub, old.get(key) if old_has else None, old_has, _join(path, key), out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        keys = schema.get("x-kubernetes-list-map-keys") \
            if schema.get("x-kubernetes-list-type") == "map" else None
        olds: dict[tuple[Any, ...], Any] = {}
        if keys and has_old and isinstance(old, list):
            olds = {tuple(o.get(k) for k in keys): o for o in old if isinstance(o, dict)}
        for i, item in enumerate(value):
            # Only map-type list entries correlate with the old list (by their keys).
            match = olds.get(tuple(item.get(k) for k in keys)) if keys and isinstance(item, dict) else None
            _cel_violations(item, items, match, match is not None, _join(path, i), out)


def admit(obj: dict[str, Any], schema: dict[str, Any], old: dict[str, Any] | None = None) -> list[Violation]:
    """Every reason the API server would refuse `obj` (a create, or an update of `old`)."""
    new = apply_defaults(copy.deepcopy(obj), schema)
    violations: list[Violation] = []
    _unknown_fields(new, schema, "", violations)
    violations.extend(_schema_violations(new, schema))
    previous = apply_defaults(copy.deepcopy(old), schema) if old is not None else None
    _cel_violations(new, schema, previous, previous is not None, "", violations)
    return list(dict.fromkeys(violations))


def version_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of one served version (the storage version when not named)."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version or (version is None and entry.get("storage")):
            return entry["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(f"no version {version!r} in {crd['metadata']['name']}")


def load_crd(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- the CRD itself

_SCHEMA_KEYS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
    "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties",
    "required", "items", "allOf", "oneOf", "anyOf", "not", "properties", "additionalProperties",
    "patternProperties", "dependencies", "additionalItems", "definitions", "externalDocs", "example",
    "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}
"""The fields of apiextensions.k8s.io/v1 JSONSchemaProps; anything else is refused."""

_RULE_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "duration", "uri",
            "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "password", ""}
_MACRO = re.compile(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\.(?:all|exists|exists_one|map|filter)\(")


def _schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for name in [p for p in dotted.split(".") if p]:
        node = _child_schema(node, name) if node is not None else None
    return node


def structural_problems(schema: dict[str, Any], path: str = "", in_list: bool = False,
                        preserved: bool = False) -> list[str]:
    """What a real API server refuses in a CRD schema: non-structural nodes, bad defaults,
    invalid rules, transition rules it cannot correlate, unbounded lists that rules iterate."""
    where = path or "<root>"
    problems: list[str] = []
    unknown = sorted(set(schema) - _SCHEMA_KEYS)
    if unknown:
        problems.append(f"{where}: unknown schema keys {unknown}")
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{where}: no type (structural schemas type every node)")
    if "type" in schema and schema["type"] not in _TYPES:
        problems.append(f"{where}: unknown type {schema['type']!r}")
    if schema.get("format", "") not in _FORMATS:
        problems.append(f"{where}: unknown format {schema['format']!r}")
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        problems.append(f"{where}: both properties and additionalProperties")
    if schema.get("type") == "object" and schema.get("required"):
        missing = set(schema["required"]) - set(schema.get("properties", {}))
        if missing and not schema.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{where}: required fields not in properties: {sorted(missing)}")
    if "default" in schema:
        if preserved:
            problems.append(f"{where}: default inside x-kubernetes-preserve-unknown-fields")
        default = apply_defaults(copy.deepcopy(schema["default"]), schema)
        errors: list[Violation] = []
        _unknown_fields(default, schema, "", errors)
        errors.extend(admit_value(default, schema))
        if errors:
            problems.append(f"{where}: default {schema['default']!r} is invalid: {errors[0]}")
    for rule in schema.get("x-kubernetes-validations", ()):
        problems.extend(_rule_problems(rule, schema, where, in_list))
    preserved = preserved or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for name, sub in schema.get("properties", {}).items():
        problems.extend(structural_problems(sub, _join(path, name), in_list, preserved))
    if isinstance(schema.get("additionalProperties"), dict):
        problems.extend(structural_problems(schema["additionalProperties"], f"{path}[*]", in_list,
                                            preserved))
    if isinstance(schema.get("items"), dict):
        correlates = schema.get("x-kubernetes-list-type") == "map"
        problems.extend(structural_problems(schema["items"], f"{path}[*]", in_list or not correlates,
                                            preserved))
    return problems


def _rule_problems(rule: dict[str, Any], schema: dict[str, Any], where: str, in_list: bool) -> list[str]:
    problems: list[str] = []
    if set(rule) - _RULE_KEYS or "rule" not in rule:
        problems.append(f"{where}: malformed validation rule {rule!r}")
        return problems
    expression = rule["rule"]
    try:
        compile_rule(expression)
    except celpy.CELParseError as error:
        problems.append(f"{where}: rule {expression!r} does not compile: {error}")
    if "\n" in rule.get("message", ""):
        problems.append(f"{where}: rule message has a line break")
    if "fieldPath" in rule and _schema_at(schema, rule["fieldPath"]) is None:
        problems.append(f"{where}: fieldPath {rule['fieldPath']!r} names no field")
    if is_transition_rule(expression) and in_list:
        problems.append(f"{where}: transition rule {expression!r} under a list that does not correlate")
    for dotted in _MACRO.findall(expression):
        target = _schema_at(schema, dotted)
        if target is None:
            problems.append(f"{where}: rule iterates self{dotted}, which the schema does not declare")
        elif target.get("type") == "array" and "maxItems" not in target:
            problems.append(f"{where}: rule iterates self{dotted} without maxItems (CEL cost budget)")
        elif target.get("type") == "object" and "maxProperties" not in target:
            problems.append(f"{where}: rule iterates self{dotted} without maxProperties (CEL cost budget)")
    return problems


def admit_value(value: Any, schema: dict[str, Any]) -> list[Violation]:
    """Schema and non-transition rule violations of a value of one schema node."""
    out: list[Violation] = list(_schema_violations(value, schema))
    _cel_violations(value, schema, None, False, "", out)
    return out
