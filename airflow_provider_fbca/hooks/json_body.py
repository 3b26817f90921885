"""The JSON text of a request body, in plain Python: exactly ``json.dumps(body, separators=(",", ":"))``.

An upload's body is mostly its rows: 10,000 lists of SHA-256 hex digests and ids, text that needs no
escaping. ``json.dumps`` still looks at every character of every value to escape it, in the thread that
sends, under the interpreter lock the run's own thread needs. Rows of plain ASCII text are joined instead
(one check of the whole text proves nothing needed escaping), at about half the cost; anything else is
left to ``json.dumps``. The text is the same either way.
"""

from __future__ import annotations

import json
from typing import Any

_SEPARATORS = (",", ":")
#: What ``json.dumps`` escapes in ASCII text: the control characters, DEL, the quote and the backslash.
_ESCAPED = bytes([*range(0x20), 0x7F]) + b'"\\'


def dumps_compact(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, with lists of rows of plain text joined.

    :param value: a JSON value: objects (text keys) nest as they are, a list of rows is joined when it can
        be.
    """
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)  # one copy of the text: each copy of megabytes costs as much as the joining


def _encode(value: Any, parts: list[str]) -> None:
    """Append the JSON text of ``value`` to ``parts``."""
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            parts.append(f"{',' if index else ''}{json.dumps(key)}:")
            _encode(item, parts)
        parts.append("}")
        return
    if isinstance(value, list) and _plain_text_rows(value):
        parts += ('[["', '"],["'.join(map('","'.join, value)), '"]]')
        return
    parts.append(json.dumps(value, separators=_SEPARATORS))


def _plain_text_rows(rows: list[Any]) -> bool:
    """Whether ``rows`` is a list of rows (lists or tuples of text, all as long) none of whose values JSON
    escapes. Checked a column at a time: a column of digests and plain ids is letters and digits only, which
    one C pass tells (``bytes.isalnum``), a few times faster than looking for what JSON escapes."""
    if not rows or not set(map(type, rows)) <= {list, tuple} or len(set(map(len, rows))) != 1:
        return False
    try:
        for column in zip(*rows, strict=True):
            text = "".join(column).encode("ascii")
            if not text.isalnum() and len(text.translate(None, _ESCAPED)) != len(text):
                return False
    except (TypeError, UnicodeEncodeError):  # a value that is no text, or text JSON would escape
        return False
    return bool(rows[0])
