"""JSON Schema checks before llama.cpp's converter sees a schema (grammar.py converts it).

The converter trusts its input: it crashes on a wrong keyword type, unrolls every bound into
rules (a 200-byte ``maxLength: 10**9`` schema is an OOM), names rules after ``$ref`` paths so
two targets can share one rule, and ignores keywords it does not know. So every keyword it reads
is type-checked here, every bound that makes it repeat a rule is capped, the grammar it would
write is estimated (and refused above a cap), and keywords it would not enforce are refused: the
output of a grammar-constrained request always validates against the schema the client sent.
A pattern the converter would spin on forever, or that needs a character no token can produce
(at which llama.cpp aborts the provider's process), is refused too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from darkbloom.errors import InvalidRequest

# llama.cpp's grammar parser refuses an optional chain longer than about 1000 (and crashes the
# process far beyond): ``maxLength: n`` becomes n nested groups.
MAX_REPEAT = 1000
MAX_PATTERN_LENGTH = 1000
MAX_SCHEMA_NODES = 10_000
MAX_SCHEMA_DEPTH = 32
MAX_ENUM_VALUES = 1000
MAX_GRAMMAR_BYTES = 1 << 20  # estimated before conversion, measured after

# Keywords the converter silently ignores: output could break them, so they are refused.
_UNENFORCED = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
    "minProperties", "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
    "dependentSchemas", "dependencies", "if", "then", "else", "contains", "minContains",
    "maxContains", "not",
})
_FORMATS = frozenset({"date", "time", "date-time"})
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")
_REFS = "$darkbloom-refs"
_LITERALS = frozenset({"enum", "const", "default", "examples"})
_SPELLABLE = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff\U00010000-\U0010ffff]*')
# What the converter writes per rule, per repetition and per optional-property pair, in bytes:
# a generous estimate, so that the cap refuses before conversion what conversion would blow up.
_RULE_COST, _REPEAT_COST = 64, 12


def checked_schema(schema: Any, param: str) -> str:
    """The JSON text to convert: ``schema`` checked and bounded, ``$ref`` targets renamed."""
    walk = _Walk(schema, param)
    cost = walk.schema(schema, "", 0)
    if cost + sum(walk.ref_costs.values()) > MAX_GRAMMAR_BYTES:
        raise walk.refuse("is too complex: its grammar would exceed "
                          f"{MAX_GRAMMAR_BYTES // 1024} KiB (fewer or smaller bounds, properties "
                          "or enum values)")
    return json.dumps(_canonical_refs(schema, walk.targets))


class _Walk:
    def __init__(self, root: Any, param: str) -> None:
        self.root, self.param = root, param
        self.nodes = self.enum_values = 0
        self.targets: dict[str, dict[str, Any]] = {}  # $ref -> its target
        self.ref_costs: dict[int, int] = {}  # id(target) -> cost, once per target
        self._walking: set[int] = set()

    def refuse(self, what: str, code: str = "unsupported_parameter") -> InvalidRequest:
        return InvalidRequest(f"{self.param} {what}", param=self.param, code=code)

    def invalid(self, what: str) -> InvalidRequest:
        return self.refuse(what, "invalid_request_error")

    def schema(self, node: Any, name: str, depth: int) -> int:
        """Check one (sub)schema; return the estimated bytes of grammar it makes."""
        if not isinstance(node, dict):
            raise self.invalid(f"has a subschema at {name or 'the root'} that is not an object")
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES or depth > MAX_SCHEMA_DEPTH:
            raise self.refuse(f"is too large: at most {MAX_SCHEMA_NODES} subschemas, nested at "
                              f"most {MAX_SCHEMA_DEPTH} deep")
        for key in node:
            if key in _UNENFORCED:
                raise self.refuse(f"uses {key!r}, which the grammar cannot enforce; remove it "
                                  "(output would not be guaranteed to validate)")
        cost = _RULE_COST + 4 * len(name)
        cost += self._scalars(node, name)
        for key in ("properties", "$defs", "definitions"):
            if key in node:
                cost += self._named(node, key, name, depth)
        if "additionalProperties" in node and not isinstance(node["additionalProperties"], bool):
            cost += self.schema(node["additionalProperties"], f"{name}-additional-value", depth + 1)
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if key in node:
                cost += self._alternatives(node[key], key, name, depth)
        items = node.get("items")
        if isinstance(items, list):
            cost += self._alternatives(items, "items", name, depth)
        elif items is not None:
            cost += self.schema(items, f"{name}-item", depth + 1)
        item_name = 4 if node.get("type") == "string" else len(name) + 5  # "char" or "<name>-item"
        bound = max((node[k] for k in _BOUNDS if k in node), default=0)
        cost += bound * (_REPEAT_COST + item_name)
        if "$ref" in node:
            cost += self._ref(node["$ref"], depth, in_all_of=False)
        return cost

    def _scalars(self, node: dict[str, Any], name: str) -> int:
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and (not kinds or not all(isinstance(k, str) and k in _TYPES for k in kinds)):
            raise self.invalid(f"has an invalid 'type' at {name or 'the root'}: a JSON type name "
                               "or a non-empty array of them")
        fmt = node.get("format")
        if fmt is not None and (not isinstance(fmt, str) or fmt not in _FORMATS):
            shown = fmt[:32] if isinstance(fmt, str) else type(fmt).__name__
            raise self.refuse(f"uses 'format: {shown}', which the grammar cannot enforce; remove "
                              "it (output would not be guaranteed to validate)")
        for key in _BOUNDS:
            value = node.get(key)
            if key in node and (not isinstance(value, int) or isinstance(value, bool)
                                or not 0 <= value <= MAX_REPEAT):  # null included: not a bound
                raise self.refuse(f"has {key} outside the integers 0 to {MAX_REPEAT}: the "
                                  "grammar unrolls each bound into rules")
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
            if node.get(low, 0) > node.get(high, MAX_REPEAT):
                raise self.invalid(f"has {low} greater than {high}")
        required = node.get("required", [])
        properties = node.get("properties", {})
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.invalid("has a 'required' that is not an array of strings")
        if isinstance(properties, dict) and any(r not in properties for r in required):
            raise self.refuse("requires a property it does not list in 'properties', which the "
                              "grammar cannot enforce")
        cost = 0
        if "enum" in node:
            values = node["enum"]
            if not isinstance(values, list) or not values:
                raise self.invalid("has an 'enum' that is not a non-empty array")
            self._literal(values)
            self.enum_values += len(values)
            if self.enum_values > MAX_ENUM_VALUES:
                raise self.refuse(f"has more than {MAX_ENUM_VALUES} enum values")
            cost += 2 * len(json.dumps(values)) + _REPEAT_COST * len(values)
        if "const" in node:
            self._literal(node["const"])
            cost += 2 * len(json.dumps(node["const"]))
        if "pattern" in node:
            cost += self._pattern(node["pattern"], name)
        return cost

    def _literal(self, value: Any) -> None:
        """Strings the grammar spells out (property names, enum and const values). The converter
        writes them JSON-escaped into GBNF literals without escaping the escapes, so a quote,
        backslash or control character (and a character outside the BMP, written as a surrogate
        pair) would be generated as something else, or break the grammar."""
        if isinstance(value, list):
            for item in value:
                self._literal(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._literal(key)
                self._literal(item)
        elif isinstance(value, str) and not _SPELLABLE.fullmatch(value):
            raise self.refuse(f"has the string {value[:32]!r} as a property name, enum or const "
                              "value: the grammar cannot write quotes, backslashes, control "
                              "characters or characters outside the Basic Multilingual Plane")

    def _pattern(self, pattern: Any, name: str) -> int:
        if not isinstance(pattern, str) or not pattern.startswith("^") or not pattern.endswith("$") \
                or len(pattern) < 2:
            raise self.refuse("has a 'pattern' the grammar cannot enforce: it must be a string "
                              "anchored with ^ and $")
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise self.refuse(f"has a 'pattern' longer than {MAX_PATTERN_LENGTH} characters")
        if "\x00" in pattern:  # no model generates it, and it would cut llama.cpp's C string
            raise self.refuse("has a NUL character in 'pattern'; no model can generate it")
        parts = list(_pattern_parts(pattern))
        if any(kind in ("]", "}") for kind, _ in parts):
            # The converter makes no progress on these and spins forever (a thread per request).
            raise self.refuse("has an unmatched ']' or '}' in 'pattern'; escape it as \\] or \\}")
        if any(not _producible(kind, text) for kind, text in parts):
            # A step no token can take: llama.cpp aborts the provider's process when it reaches one.
            raise self.refuse("has a 'pattern' that requires a character no model can generate "
                              "(an empty character class, NUL, a surrogate or beyond U+10FFFF)")
        cost = 4 * len(pattern)
        for quantifier in (text for kind, text in parts if kind == "{"):
            bounds = [b.strip() for b in quantifier.split(",")]
            numbers = [int(b) for b in bounds if b.isascii() and b.isdigit()]
            if len(bounds) > 2 or not numbers or len(numbers) != sum(1 for b in bounds if b):
                raise self.refuse(f"has an invalid quantifier {{{quantifier[:16]}}} in 'pattern'")
            if max(numbers) > MAX_REPEAT:
                raise self.refuse(f"has a quantifier above {MAX_REPEAT} in 'pattern': the grammar "
                                  "unrolls each into rules")
            cost += max(numbers) * (_REPEAT_COST + len(name) + 8)
        return cost

    def _named(self, node: dict[str, Any], key: str, name: str, depth: int) -> int:
        members = node[key]
        if not isinstance(members, dict):
            raise self.invalid(f"has {key!r} that is not an object of named subschemas")
        if key == "properties":
            self._literal(list(members))
        optional = len(set(members) - set(node.get("required", ()))) if key == "properties" else 0
        cost = _REPEAT_COST * optional * optional  # the converter pairs every optional property
        for member, sub in members.items():
            cost += self.schema(sub, f"{name}-{member}" if key == "properties" else member, depth + 1)
        return cost

    def _alternatives(self, items: Any, key: str, name: str, depth: int) -> int:
        if not isinstance(items, list) or not items:
            raise self.invalid(f"has {key!r} that is not a non-empty array of subschemas")
        cost = 0
        for i, item in enumerate(items):
            cost += self.schema(item, f"{name}-{i}", depth + 1)
            if key == "allOf" and "$ref" in item:
                cost += self._ref(item["$ref"], depth, in_all_of=True)  # re-expanded per use
        return cost

    def _ref(self, ref: Any, depth: int, *, in_all_of: bool) -> int:
        """A local ``$ref``, resolved as the converter resolves it; its target's cost is counted
        once, or on every use inside ``allOf``, where the converter expands it again."""
        target: Any = self.root
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise self.refuse("has a '$ref' that is not a local '#/...' pointer")
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise self.invalid(f"has a '$ref' that points nowhere: {ref[:64]!r}")
            target = target[part]
        if not isinstance(target, dict):
            raise self.invalid(f"has a '$ref' whose target is not a schema: {ref[:64]!r}")
        self.targets[ref] = target
        key = id(target)
        if key in self._walking:
            if in_all_of:
                raise self.refuse("has a recursive 'allOf', which the grammar cannot express")
            return 0
        if key in self.ref_costs and not in_all_of:
            return 0
        if key not in self.ref_costs:
            self._walking.add(key)
            self.ref_costs[key] = self.schema(target, "ref-0-000000000000", depth + 1)
            self._walking.discard(key)
        return self.ref_costs[key] if in_all_of else 0


# What a model can generate: every Unicode scalar value but NUL (llama.cpp drops tokens whose
# text starts with it) and the surrogates.
_GENERABLE = ((0x1, 0xD7FF), (0xE000, 0x10FFFF))
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def _pattern_parts(pattern: str) -> Iterator[tuple[str, str]]:
    """A pattern's body as the converter reads it: ``("{", quantifier)``, ``("[", class body)``,
    ``("", one literal character or escape)``, or ``("]", "]")`` / ``("}", "}")`` for a closer
    it would not know what to do with. Escapes and character classes are skipped as it skips
    them; an unclosed class or brace yields the rest."""
    body, i = pattern[1:-1], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            end = _char(body, i)[1]
            yield "", body[i:end]
            i = end
        elif c == "[":
            end = i + 1
            while end < len(body) and body[end] != "]":
                end += 2 if body[end] == "\\" else 1
            yield "[", body[i + 1:end]
            i = end + 1
        elif c == "{":
            end = body.find("}", i)
            end = len(body) if end < 0 else end
            yield "{", body[i + 1:end]
            i = end + 1
        else:
            if c in "]}":
                yield c, c
            elif c not in ".()|*+?":
                yield "", c
            i += 1


def _char(text: str, i: int) -> tuple[int, int]:
    """The code point of the character (or GBNF escape) at ``text[i]`` as llama.cpp's grammar
    reads it, and where the next one starts."""
    if text[i] != "\\" or i + 1 == len(text):
        return ord(text[i]), i + 1
    kind = text[i + 1]
    digits = text[i + 2:i + 2 + _HEX_DIGITS.get(kind, 0)]
    if kind in _HEX_DIGITS and len(digits) == _HEX_DIGITS[kind] and digits.isascii() \
            and all(d in "0123456789abcdefABCDEF" for d in digits):
        return int(digits, 16), i + 2 + len(digits)
    return ord({"n": "\n", "r": "\r", "t": "\t"}.get(kind, kind)), i + 2


def _producible(kind: str, text: str) -> bool:
    """Whether a literal character (``kind`` "") or character class ("[") matches something a
    model can generate; quantifiers always can."""
    if kind == "{":
        return True
    if kind == "[":
        negated, spans = _class_spans(text)
    else:
        code = _char(text, 0)[0]
        negated, spans = False, [(code, code)]
    for start, end in _GENERABLE:
        for low, high in sorted(s for s in spans if s[0] <= s[1]):  # a reversed range is empty
            if not negated and low <= end and high >= start:
                return True
            if negated and low <= start <= high:
                start = high + 1
        if negated and start <= end:
            return True
    return False


def _class_spans(text: str) -> tuple[bool, list[tuple[int, int]]]:
    """A character class body as llama.cpp reads it: negated or not, and its ranges."""
    negated, spans = text.startswith("^"), []
    i = 1 if negated else 0
    while i < len(text):
        low, i = _char(text, i)
        high = low
        if text[i:i + 1] == "-" and i + 1 < len(text):  # a "-" just before "]" is itself
            high, i = _char(text, i + 1)
        spans.append((low, high))
    return negated, spans


def _canonical_refs(schema: dict[str, Any], targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Point every ``$ref`` at a copy of its target under a unique, rule-safe name.

    The converter names a target's rule after the ref's last segment and memoizes by that name:
    two targets sharing one (or sharing it with a property's rule) got one grammar, and a name it
    had to escape was expanded again at every use (exponential in nesting).
    """
    if not targets:
        return schema
    digest = hashlib.sha256(json.dumps(schema).encode()).hexdigest()[:12]
    names = {ref: f"ref-{i}-{digest}" for i, ref in enumerate(targets)}

    def rewrite(node: Any, named: bool = False) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        if named:  # properties / $defs: the keys are names, the values subschemas
            return {key: rewrite(value) for key, value in node.items()}
        return {key: f"#/{_REFS}/{names[value]}"
                if key == "$ref" and isinstance(value, str) and value in names
                else value if key in _LITERALS
                else rewrite(value, key in ("properties", "$defs", "definitions"))
                for key, value in node.items()}

    canonical: dict[str, Any] = rewrite(schema)
    canonical[_REFS] = {names[ref]: rewrite(target) for ref, target in targets.items()}
    return canonical
