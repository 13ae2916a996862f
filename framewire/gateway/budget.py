"""How much structure one input may decode to: checked on the encoded bytes, before decoding.

A byte cap alone does not bound memory: a 4 MB msgpack frame holding an array of four
million empty maps decodes to about 300 MB of Python objects, and a deep nest of arrays
exhausts the recursion limit. Both encodings are therefore walked first, without
building anything, and refused when they hold more than :attr:`StructureBudget.max_items`
items (each container counts one, and each of its array items or map entries one) or
nest deeper than :attr:`StructureBudget.max_depth`. Strings and binary payloads are
skipped, not read, so the walk costs one step per item and stops at the budget: what a
frame or body decodes to is then at most its own size plus ``max_items`` small objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Deepest nesting of maps and lists an input may have (fal's inputs are two or three deep).
MAX_DEPTH = 32


@dataclass(frozen=True)
class StructureBudget:
    """Most items (containers, array items, map entries) and nesting depth of one input."""

    max_items: int
    max_depth: int = MAX_DEPTH
    #: The setting that raises ``max_items``, named in refusals.
    flag: str = "--max-input-items"


class OverBudget(ValueError):
    """The input holds more items, or nests deeper, than its budget; the message names the limit."""


def _too_many(budget: StructureBudget) -> OverBudget:
    return OverBudget(f"holds more than {budget.max_items} items ({budget.flag})")


def _too_deep(budget: StructureBudget) -> OverBudget:
    return OverBudget(f"nests deeper than {budget.max_depth} levels")


def _msgpack_table() -> list[int]:
    """What each msgpack type byte is: ``>= 0`` a scalar followed by that many bytes;
    :data:`_SIZED_1`..: a str, bin or ext with a length field; :data:`_ARRAY`, :data:`_MAP`
    (+ the length field's width): a container; :data:`_INVALID`: never used."""
    table = [0] * 256
    for b in range(0xA0, 0xC0):  # fixstr
        table[b] = b & 0x1F
    fixed = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    fixed.update({0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17})  # fixext: type byte + data
    for b, skip in fixed.items():
        table[b] = skip
    for b, width, extra in ((0xC4, 1, 0), (0xC5, 2, 0), (0xC6, 4, 0), (0xD9, 1, 0), (0xDA, 2, 0), (0xDB, 4, 0)):
        table[b] = _SIZED + width * 2 + extra
    for b, width in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):  # ext: length, type byte, data
        table[b] = _SIZED + width * 2 + 1
    for b in range(0x80, 0x90):
        table[b] = _FIXMAP
    for b in range(0x90, 0xA0):
        table[b] = _FIXARRAY
    table[0xDC], table[0xDD], table[0xDE], table[0xDF] = _ARRAY + 2, _ARRAY + 4, _MAP + 2, _MAP + 4
    table[0xC1] = _INVALID
    return table


_SIZED, _ARRAY, _MAP, _FIXMAP, _FIXARRAY, _INVALID = -100, -200, -300, -400, -500, -600
_TABLE = _msgpack_table()


def check_msgpack(data: bytes, budget: StructureBudget) -> None:
    """Raise :class:`OverBudget` when ``data`` (one msgpack object) is over ``budget``.

    Malformed or truncated input is not this function's concern: it stops walking and
    leaves the decoder to report it.
    """
    table = _TABLE
    end = len(data)
    max_items, max_depth = budget.max_items, budget.max_depth
    pos = items = 0
    left = 1  # objects still to read at this level (a map entry is two: key and value)
    outer: list[int] = []  # the same for each enclosing level
    while True:
        if not left:
            if not outer:
                return
            left = outer.pop()
            continue
        if pos >= end:
            return
        left -= 1
        kind = table[data[pos]]
        pos += 1
        if kind >= 0:  # fixint, fixstr, nil, bool, float, int, fixext
            pos += kind
            continue
        if kind in (_FIXMAP, _FIXARRAY):
            count = data[pos - 1] & 0x0F
            slots = 2 if kind == _FIXMAP else 1
        elif kind >= _SIZED:  # str, bin, ext: skip the payload
            code = kind - _SIZED
            width, extra = code >> 1, code & 1
            pos += width + extra + int.from_bytes(data[pos : pos + width], "big")
            continue
        elif kind >= _MAP:  # array16/32, map16/32
            slots = 1 if kind >= _ARRAY else 2
            width = kind - (_ARRAY if slots == 1 else _MAP)
            count = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:  # 0xC1 is never used: the decoder will say so
            return
        items += 1 + count
        if items > max_items:
            raise _too_many(budget)
        if count:
            outer.append(left)
            if len(outer) > max_depth:
                raise _too_deep(budget)
            left = count * slots


# One JSON token that matters for the budget: a string (skipped whole), or a bracket or comma.
_JSON_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{},]')


def check_json(raw: bytes, budget: StructureBudget) -> None:
    """Raise :class:`OverBudget` when the JSON text ``raw`` is over ``budget``.

    Counts containers and commas outside strings (an upper bound of the items by at most
    one per container). Malformed JSON is left to the decoder.
    """
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") < budget.max_items and (
        raw.count(b"[") + raw.count(b"{") <= budget.max_depth
    ):
        return  # cannot be over budget: no need to look closer
    items = 0
    depth = 0
    max_items, max_depth = budget.max_items, budget.max_depth
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        first = token[0]
        if first == 0x22:  # a string
            continue
        if first in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise _too_deep(budget)
            items += 1
        elif first in (0x5D, 0x7D):  # ] }
            depth -= 1
            continue
        else:  # a comma
            items += 1
        if items > max_items:
            raise _too_many(budget)
