"""JSON from clients, with the bounds ``json.loads`` lacks.

Nesting depth: Python's recursion limit is no bound (it moves with the caller's stack, and a
RecursionError surfaces wherever a later walk happens to be), so depth is measured and refused
here. Lone UTF-16 surrogates: ``"\\ud800"`` decodes to a str that cannot be encoded, which fails
later in the tokenizer or the error renderer instead of here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy  # llama-cpp-python's dependency, so on both sides

MAX_DEPTH = 64
# json.loads holds the GIL for about 1 µs per array or object, even in a worker thread: a 4 MiB
# body of "[]" stalled every other request for 1.5 s. So containers are counted before parsing;
# no honest request comes near this many.
MAX_CONTAINERS = 100_000
# Scalars and members cost less each (0.1 to 0.3 µs), but 4 MiB of `"",` still held it for 180 ms:
# the separators between values are counted too.
MAX_VALUES = 200_000

_STEPS = numpy.zeros(256, dtype=numpy.int8)
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class TooDeep(ValueError):
    pass


class LoneSurrogate(ValueError):
    pass


class TooManyContainers(ValueError):
    pass


class TooManyValues(ValueError):
    pass


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises TooDeep past ``max_depth`` levels and LoneSurrogate for a string
    holding half a surrogate pair, TooManyContainers past MAX_CONTAINERS ``[``/``{`` characters,
    TooManyValues past MAX_VALUES ``,`` (all outside strings); ValueError, as json.loads does, for
    anything else invalid."""
    if text.count("[") + text.count("{") > MAX_CONTAINERS and containers(text) > MAX_CONTAINERS:
        raise TooManyContainers(f"JSON with more than {MAX_CONTAINERS} '[' and '{{' characters")
    if text.count(",") > MAX_VALUES and outside_strings(text, b",") > MAX_VALUES:
        raise TooManyValues(f"JSON with more than {MAX_VALUES} values")
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(f"JSON nested more than {max_depth} levels deep") from None
    if nesting_depth(text) > max_depth:
        raise TooDeep(f"JSON nested more than {max_depth} levels deep")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise LoneSurrogate("JSON string holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                                "which is not valid Unicode") from None
    return value


def _bytes_outside_strings(text: str) -> Any:
    """The text's bytes that stand outside JSON strings, for any text (valid JSON or not), in
    linear time: a quote preceded by an odd run of backslashes is escaped; the others open and
    close strings. Vectorized, so a 4 MiB body takes milliseconds, not a second of held GIL."""
    raw = numpy.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=numpy.uint8)
    if raw.size == 0:
        return raw
    index = numpy.arange(raw.size)
    last_other = numpy.maximum.accumulate(numpy.where(raw == ord("\\"), -1, index))
    run_before = numpy.empty(raw.size, dtype=numpy.int64)
    run_before[0] = 0
    run_before[1:] = index[:-1] - last_other[:-1]
    quotes = (raw == ord('"')) & (run_before % 2 == 0)
    return raw[numpy.cumsum(quotes) % 2 == 0]


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting, brackets inside strings ignored."""
    outside = _bytes_outside_strings(text)
    if not outside.size:
        return 0
    return max(0, int(numpy.cumsum(_STEPS[outside], dtype=numpy.int64).max()))


def containers(text: str) -> int:
    """How many ``[``/``{`` stand outside strings."""
    return outside_strings(text, b"[{")


def outside_strings(text: str, chars: bytes) -> int:
    """How many of the ASCII ``chars`` stand outside strings."""
    wanted = numpy.frombuffer(chars, dtype=numpy.uint8)
    return int(numpy.count_nonzero(numpy.isin(_bytes_outside_strings(text), wanted)))
