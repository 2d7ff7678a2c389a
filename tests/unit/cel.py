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

`structural_problems` lists what a real API server would refuse in a CRD's schema itself, among
it rules whose estimated cost exceeds the API server's budgets: `rule_costs` replays cel-go's
static cost estimate with the Kubernetes size estimator (the largest value each field can hold,
from maxLength, maxItems and maxProperties), checked against numbers computed by
k8s.io/apiextensions-apiserver itself.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator, Sized
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import celpy
import jsonschema
import lark
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


def cel_view(value: Any, schema: dict[str, Any]) -> Any:
    """A value as rules see it: the properties of objects under their CEL names (`escape_property`:
    `namespace` is `__namespace__`); a reserved word is also readable as itself, as the API server
    allows. Map keys are data and stay as they are."""
    if isinstance(value, dict) and "properties" in schema:
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = schema["properties"].get(key)
            view = cel_view(item, sub) if sub is not None else item
            name = escape_property(key)
            if name is not None:
                out[name] = view
            if key in _RESERVED:
                out[key] = view
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {key: cel_view(item, schema["additionalProperties"]) for key, item in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [cel_view(item, schema["items"]) for item in value]
    return value


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
            verdict = evaluate(expression, cel_view(value, schema),
                               cel_view(old, schema) if transition else None)
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


def structural_problems(schema: dict[str, Any], path: str = "", in_list: bool = False,  # noqa: C901  one API-server rule each
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
    if not path:
        problems.extend(cost_problems(schema))
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


# ----------------------------------------------------------------------------- rule cost

MAX_REQUEST_BYTES = 3 * 1024 * 1024
"""What the API server's CEL cost estimate assumes one request can hold (celconfig.MaxRequestSizeBytes)."""
RULE_COST_LIMIT = 10_000_000
"""The largest estimated cost of one rule a CRD may declare (StaticEstimatedCostLimit)."""
CRD_COST_LIMIT = 100_000_000
"""The largest estimated cost of all the rules of a CRD (StaticEstimatedCRDCostLimit)."""
PER_CALL_LIMIT = 1_000_000
"""The cost one evaluation of a rule may spend at admission (celconfig.PerCallLimit)."""
OBJECT_BUDGET = 10_000_000
"""The cost all the rules may spend on one object at admission (celconfig.RuntimeCELCostBudget)."""

_UNBOUNDED = 2**64 - 1
_STRING_TRAVERSAL = 0.1
_REGEX_LENGTH = 0.25
_LIST_CREATE = 10
_SCALARS = {"bool", "int", "uint", "double", "null"}
_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
             "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
"""Words CEL reserves: a property of that name is `__name__` in rules (Kubernetes escaping)."""


def _add_costs(*costs: int) -> int:
    return min(sum(costs), _UNBOUNDED)


def _mul(a: int, b: int) -> int:
    return min(a * b, _UNBOUNDED)


def _factor(size: int, factor: float) -> int:
    """cel-go's MultiplyByCostFactor: the product rounded up, in float arithmetic as Go does it."""
    product = math.ceil(float(size) * factor)
    return _UNBOUNDED if product >= 2**64 else product


def escape_property(name: str) -> str | None:
    """The CEL name of a schema property (Kubernetes `cel.Escape`), or None when it has none."""
    if not name or name[0].isdigit():
        return None
    if name in _RESERVED:
        return f"__{name}__"
    if re.fullmatch(r"[A-Za-z0-9_]*", name) and "__" not in name:
        return name
    out = ""
    for part in re.split(r"(__|[-./])", name):
        replacement = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}.get(part)
        if replacement is None and not re.fullmatch(r"[A-Za-z0-9_]*", part):
            return None
        out += replacement or part
    return out


def _string_max_elements(schema: dict[str, Any]) -> int:
    fmt = schema.get("format", "")
    if fmt in ("duration", "date-time"):
        return 32
    if fmt == "date":
        return 12
    if schema.get("maxLength") is not None:
        # maxLength counts characters, the estimate bytes: up to 4 per character (none for format: byte)
        return int(schema["maxLength"]) * (1 if fmt == "byte" else 4)
    if schema.get("enum") and fmt != "byte":
        return max(len(str(e)) for e in schema["enum"])
    return MAX_REQUEST_BYTES - 2


def min_serialized_size(schema: dict[str, Any]) -> int:
    """The smallest JSON a value of the schema can be (`DeclType.MinSerializedSize`)."""
    if schema.get("x-kubernetes-int-or-string"):
        return 1
    kind = schema.get("type")
    if kind == "string":
        return {"duration": 3, "date": 12, "date-time": 21}.get(schema.get("format", ""), 2)
    if kind == "boolean":
        return 4
    if kind in ("integer", "number"):
        return 1
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        return 2 + sum(len(name) + min_serialized_size(sub) + 4 for name, sub in schema["properties"].items()
                       if name in required and "default" not in sub)
    return 2


def max_elements(schema: dict[str, Any]) -> int:
    """The size the API server assumes a value of the schema can reach (`DeclType.MaxElements`):
    characters of a string, items of a list, entries of a map; 0 for other types."""
    if schema.get("x-kubernetes-int-or-string"):
        return int(schema["maxLength"]) * 4 if schema.get("maxLength") is not None else MAX_REQUEST_BYTES - 2
    kind = schema.get("type")
    if kind == "string":
        return _string_max_elements(schema)
    if kind == "array":
        if schema.get("maxItems") is not None:
            return int(schema["maxItems"])
        return (MAX_REQUEST_BYTES - 2) // (min_serialized_size(schema.get("items") or {}) + 1)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        if schema.get("maxProperties") is not None:
            return int(schema["maxProperties"])
        return (MAX_REQUEST_BYTES - 2) // (min_serialized_size(schema["additionalProperties"]) + 6)
    return 0


def _kind_of(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "dyn"
    kind = schema.get("type")
    if kind == "object":
        return "map" if isinstance(schema.get("additionalProperties"), dict) else "object"
    return {"string": "string", "integer": "int", "number": "double", "boolean": "bool", "array": "list"}.get(
        str(kind), "dyn")


@dataclasses.dataclass(frozen=True)
class _Estimate:
    cost: int
    kind: str
    size: int
    """The largest size (characters, items, entries) the estimator ascribes: unbounded when unknown."""
    schema: dict[str, Any] | None = None
    """The schema of the value when it is data of the object (for field types)."""
    sized: bool = False
    """Whether the size comes from the schema through a path the API server can follow."""


class _Coster:
    """cel-go's static cost estimate (checker/cost.go) with the Kubernetes size estimator and
    library costs, for the CEL the Dockyard CRDs use; anything else raises NotImplementedError."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.scopes: list[dict[str, _Estimate]] = []

    def data(self, schema: dict[str, Any] | None, sized: bool) -> _Estimate:
        """A value of the object: its size from the schema when the API server can look it up."""
        if schema is None:
            return _Estimate(0, "dyn", _UNBOUNDED)
        kind = _kind_of(schema)
        if sized:
            size = max_elements(schema)
        else:
            size = 1 if kind in _SCALARS else _UNBOUNDED
        return _Estimate(0, kind, size, schema, sized)

    def result(self, cost: int, kind: str, size: int | None = None) -> _Estimate:
        if size is None:
            size = 1 if kind in _SCALARS else _UNBOUNDED
        return _Estimate(cost, kind, size)

    _OPERATORS = ("relation", "addition", "multiplication")

    def visit(self, tree: Any) -> _Estimate:
        children = self._args(tree)
        if len(children) == 1 and isinstance(children[0], lark.Tree) and tree.data != "list_lit":
            return self.visit(children[0])  # a node of the grammar that only wraps its operand
        if tree.data in self._OPERATORS:
            op, right = children
            (left,) = self._args(op)
            return getattr(self, f"_{tree.data}")(op.data, self.visit(left), self.visit(right))  # type: ignore[no-any-return]
        method = getattr(self, f"_{tree.data}", None)
        if method is None:
            raise NotImplementedError(f"no cost model for CEL {tree.data}")
        return method(tree)  # type: ignore[no-any-return]

    @staticmethod
    def _args(tree: Any) -> list[Any]:
        return [c for c in tree.children if c is not None]

    def _expr(self, tree: Any) -> _Estimate:
        cond, yes, no = (self.visit(p) for p in self._args(tree))
        kind = yes.kind if yes.kind == no.kind else "dyn"
        return self.result(_add_costs(cond.cost, max(yes.cost, no.cost)), kind, max(yes.size, no.size))

    def _logical(self, tree: Any) -> _Estimate:
        left, right = (self.visit(p) for p in self._args(tree))
        return self.result(_add_costs(left.cost, right.cost), "bool")

    _conditionalor = _logical
    _conditionaland = _logical

    def _relation(self, op: str, left: _Estimate, right: _Estimate) -> _Estimate:
        args = _add_costs(left.cost, right.cost)
        if op == "relation_in":
            cost = _factor(right.size, 1) if right.kind == "list" else 1
            return self.result(_add_costs(cost, args), "bool")
        if op == "relation_eq" and left.kind == right.kind == "quantity":
            return self.result(_add_costs(1, args), "bool")  # the Kubernetes library: O(1) equality
        if op in ("relation_eq", "relation_ne") or left.kind in ("string", "bytes"):
            smallest = min(left.size, right.size)
            return self.result(_add_costs(_factor(smallest, _STRING_TRAVERSAL), args), "bool")
        return self.result(_add_costs(1, args), "bool")

    def _addition(self, op: str, left: _Estimate, right: _Estimate) -> _Estimate:
        args = _add_costs(left.cost, right.cost)
        if op == "addition_add" and left.kind in ("string", "bytes", "list"):
            size = _add_costs(left.size, right.size)
            cost = 1 if left.kind == "list" else _factor(size, _STRING_TRAVERSAL)
            return self.result(_add_costs(cost, args), left.kind, size)
        return self.result(_add_costs(1, args), left.kind if left.kind == right.kind else "dyn")

    def _multiplication(self, op: str, left: _Estimate, right: _Estimate) -> _Estimate:
        return self.result(_add_costs(1, left.cost, right.cost), left.kind)

    def _unary(self, tree: Any) -> _Estimate:
        op, operand_tree = self._args(tree)
        operand = self.visit(operand_tree)
        return self.result(_add_costs(1, operand.cost), "bool" if op.data == "unary_not" else operand.kind)

    def _ident(self, tree: Any) -> _Estimate:
        name = str(tree.children[0])
        for scope in reversed(self.scopes):
            if name in scope:
                return dataclasses.replace(scope[name], cost=1)
        if name in ("self", "oldSelf"):
            return dataclasses.replace(self.data(self.schema, sized=True), cost=1)
        raise NotImplementedError(f"no cost model for the variable {name!r}")

    def _literal(self, tree: Any) -> _Estimate:
        token = tree.children[0]
        kind = {"INT_LIT": "int", "UINT_LIT": "uint", "FLOAT_LIT": "double", "BOOL_LIT": "bool",
                "NULL_LIT": "null", "BYTES_LIT": "bytes"}.get(token.type, "string")
        if kind in ("string", "bytes"):
            return _Estimate(0, kind, len(cast(Sized, compile_rule(str(token)).evaluate({}))))
        return _Estimate(0, kind, 1)

    def _list_lit(self, tree: Any) -> _Estimate:
        items = [self.visit(e) for e in self._items(tree)]
        return _Estimate(_add_costs(_LIST_CREATE, *(i.cost for i in items)), "list", len(items))

    def _items(self, tree: Any) -> list[Any]:
        """The expressions of the `exprlist` of a call or list literal."""
        lists = [c for c in tree.children if isinstance(c, lark.Tree) and c.data == "exprlist"]
        return self._args(lists[0]) if lists else []

    def _field(self, operand: _Estimate, name: str) -> _Estimate:
        """`operand.name`: the field's schema, and whether the size estimator finds it by that name."""
        schema = operand.schema
        if schema is None:
            return self.data(None, False)
        if operand.kind == "map":
            return self.data(schema["additionalProperties"], False)
        for prop, sub in (schema.get("properties") or {}).items():
            if escape_property(prop) == name:
                return self.data(sub, operand.sized)
            if prop == name and name in _RESERVED:
                # It type-checks (recognizeKeywordAsFieldName), but the size estimator looks the
                # field up by its escaped name, finds nothing, and assumes an unbounded size.
                return self.data(sub, False)
        raise NotImplementedError(f"no field {name!r} in the schema")

    def _member_dot(self, tree: Any) -> _Estimate:
        operand_tree, name = tree.children
        operand = self.visit(operand_tree)
        select = 1 if operand.kind in ("object", "map", "dyn") else 0
        return dataclasses.replace(self._field(operand, str(name)), cost=_add_costs(operand.cost, select))

    def _member_index(self, tree: Any) -> _Estimate:
        operand_tree, index_tree = tree.children
        operand, index = self.visit(operand_tree), self.visit(index_tree)
        schema = operand.schema
        item: dict[str, Any] | None = None
        if schema is not None:
            item = schema.get("items") if operand.kind == "list" else schema.get("additionalProperties")
        value = self.data(item if isinstance(item, dict) else None, operand.sized)
        return dataclasses.replace(value, cost=_add_costs(1, operand.cost, index.cost))

    def _ident_arg(self, tree: Any) -> _Estimate:
        name = str(tree.children[0])
        arg_trees = self._items(tree)
        if name == "has":
            (arg,) = arg_trees
            target = self._unwrap(arg, "member_dot")
            # A presence test costs nothing in Kubernetes (PresenceTestHasCost(false)): only its operand
            return self.result(self.visit(target.children[0]).cost, "bool")
        args = [self.visit(a) for a in arg_trees]
        cost = _add_costs(*(a.cost for a in args))
        if name in ("quantity", "isQuantity"):
            return self.result(_add_costs(_factor(args[0].size, _STRING_TRAVERSAL), cost),
                               "quantity" if name == "quantity" else "bool")
        if name in ("size", "int", "uint", "double", "string", "bool"):
            kind = {"size": "int", "string": "string"}.get(name, name)
            return self.result(_add_costs(1, cost), kind)
        raise NotImplementedError(f"no cost model for {name}()")

    def _unwrap(self, tree: Any, rule: str) -> Any:
        while tree.data != rule:
            children = self._args(tree)
            if len(children) != 1:
                raise NotImplementedError(f"has() of a {tree.data}")
            tree = children[0]
        return tree

    _MACROS = {"all", "exists", "exists_one", "map", "filter"}

    def _member_dot_arg(self, tree: Any) -> _Estimate:
        target_tree, name_token = tree.children[:2]
        name = str(name_token)
        arg_trees = self._items(tree)
        target = self.visit(target_tree)
        if name in self._MACROS:
            return self._comprehension(name, target, arg_trees)
        args = [self.visit(a) for a in arg_trees]
        cost = _add_costs(target.cost, *(a.cost for a in args))
        if name == "matches":
            text = _factor(_add_costs(target.size, 1), _STRING_TRAVERSAL)
            return self.result(_add_costs(_mul(text, _factor(args[0].size, _REGEX_LENGTH)), cost), "bool")
        if name in ("startsWith", "endsWith"):
            return self.result(_add_costs(_factor(args[0].size, _STRING_TRAVERSAL), cost), "bool")
        if name == "contains":
            product = _mul(_factor(target.size, _STRING_TRAVERSAL), _factor(args[0].size, _STRING_TRAVERSAL))
            return self.result(_add_costs(product, cost), "bool")
        kinds = {"size": "int", "compareTo": "int", "sign": "int", "asInteger": "int", "isLessThan": "bool",
                 "isGreaterThan": "bool", "isInteger": "bool", "asApproximateFloat": "double",
                 "add": "quantity", "sub": "quantity"}
        if name in kinds:
            return self.result(_add_costs(1, cost), kinds[name])
        raise NotImplementedError(f"no cost model for .{name}()")

    def _comprehension(self, macro: str, target: _Estimate, arg_trees: list[Any]) -> _Estimate:
        variable = str(self._unwrap(arg_trees[0], "ident").children[0])
        item_schema: dict[str, Any] | None = None
        if target.schema is not None and target.kind == "list":
            item_schema = target.schema.get("items")
        if target.kind == "map":
            item = _Estimate(0, "string", 0 if target.sized else _UNBOUNDED)  # keys: StringType, no MaxElements
        else:
            item = self.data(item_schema, target.sized)
        self.scopes.append({variable: item})
        try:
            bodies = [self.visit(a) for a in arg_trees[1:]]
        finally:
            self.scopes.pop()
        body = _add_costs(*(b.cost for b in bodies))
        # cel-go's macro expansions: accumulator init, loop condition, step and result, per item
        init, condition, step, result, kind = {
            "all": (0, 2, 1 + body, 1, "bool"),                       # @not_strictly_false(r); r && p
            "exists": (0, 3, 1 + body, 1, "bool"),                    # @not_strictly_false(!r); r || p
            "exists_one": (0, 0, body + 2, 2, "bool"),                # p ? r + 1 : r; r == 1
            "map": (_LIST_CREATE, 0, 2 + _LIST_CREATE + body, 1, "list"),  # r + [f]  (p ? r + [f] : r)
            "filter": (_LIST_CREATE, 0, body + 3 + _LIST_CREATE, 1, "list"),  # p ? r + [x] : r
        }[macro]
        per_item = _add_costs(condition, step)
        cost = _add_costs(target.cost, init, result, _mul(target.size, per_item))
        return self.result(cost, kind, target.size if kind == "list" else None)


def estimated_cost(expression: str, schema: dict[str, Any]) -> int:
    """The API server's static cost estimate of one rule, `self` being a value of `schema`."""
    return _Coster(schema).visit(_ENV.compile(expression)).cost


@dataclasses.dataclass(frozen=True)
class RuleCost:
    path: str
    """Where the rule is declared, as the API server names it (`properties[spec]...`)."""
    rule: str
    cost: int
    """The estimate times how often the node can occur in one object, as the API server counts it."""


def rule_costs(schema: dict[str, Any], path: str = "openAPIV3Schema", cardinality: int | None = 1
               ) -> list[RuleCost]:
    """Every rule of a CRD's schema with the cost the API server holds against its budgets."""
    costs: list[RuleCost] = []
    for i, rule in enumerate(schema.get("x-kubernetes-validations", ())):
        times = cardinality if cardinality is not None else MAX_REQUEST_BYTES // (min_serialized_size(schema) + 1)
        cost = estimated_cost(rule["rule"], schema)
        costs.append(RuleCost(f"{path}.x-kubernetes-validations[{i}].rule", rule["rule"],
                              _mul(cost, times) if cost else 0))
    for name, sub in schema.get("properties", {}).items():
        costs.extend(rule_costs(sub, f"{path}.properties[{name}]", cardinality))
    bound_key = {"array": "maxItems", "object": "maxProperties"}.get(str(schema.get("type")))
    inner = None if cardinality is None or bound_key is None or schema.get(bound_key) is None \
        else _mul(cardinality, int(schema[bound_key]))
    if isinstance(schema.get("items"), dict):
        costs.extend(rule_costs(schema["items"], f"{path}.items", inner))
    if isinstance(schema.get("additionalProperties"), dict):
        costs.extend(rule_costs(schema["additionalProperties"], f"{path}.additionalProperties", inner))
    return costs


def cost_problems(schema: dict[str, Any]) -> list[str]:
    """The budget errors the API server reports for a CRD's schema (apiextensions validation)."""
    try:
        costs = rule_costs(schema)
    except celpy.CELParseError:
        return []  # a rule that does not compile is a problem of its own
    problems = [f"{c.path}: estimated rule cost {c.cost} exceeds budget of {RULE_COST_LIMIT}"
                for c in costs if c.cost > RULE_COST_LIMIT]
    total = min(sum(c.cost for c in costs), _UNBOUNDED)
    if total > CRD_COST_LIMIT:
        problems.append(f"x-kubernetes-validations estimated rule cost total {total} for the schema "
                        f"exceeds budget of {CRD_COST_LIMIT}")
    return problems
