"""Fault injection: rules that make chosen requests fail, hang up or slow down.

``POST /_sandbox/faults`` with ``{"faults": [rule, ...]}`` appends rules; ``DELETE /_sandbox/faults``
clears them. A rule has an optional ``method``, an optional ``path`` (a regex searched in the URL path;
at most 200 characters, without nested quantifiers or backreferences, so matching takes bounded time),
``times`` (default 1) and exactly one action:

- ``error``: a Graph error object, answered in Meta's envelope with ``http_status`` (400-599, default 400);
- ``disconnect: true``: close the connection without answering and without processing the request;
- ``disconnect: "after"``: process the request, then close without answering (a lost response);
- ``delay_s``: wait that many seconds (0-600; 0 lets one request pass untouched), then answer normally;
- ``latency_s``: answer that many seconds (0-600) after the request arrived: the request is processed at
  once and its answer held for what remains, as Meta's round trip includes its processing. A ``delay_s``
  adds the sandbox's own processing (and its wait behind other requests for the state lock) on top:
  uploads of parallel clients, which Meta processes side by side, queue up in the one sandbox process.

For each request the first rule that matches and has ``times`` left applies and spends one.

``DELETE /_sandbox/faults`` also ends the delays in progress: the requests they hold go on at once (a
latency's answer goes out at once). The number held (``delayed`` in every ``/_sandbox/faults`` answer, a
delay's and a latency's alike) tells a test that a request reached the sandbox and waits there: a client caught with a request in flight, with no guess at how long it takes to
send it.

Its body may say how the held requests end instead, with the values of a rule's ``disconnect``:

- ``{"disconnect": true}``: each delayed request is dropped unprocessed, its connection closed without an
  answer (the network failed on the way to Meta);
- ``{"disconnect": "after"}``: each is processed, then dropped (Meta applied it and its answer was lost).

A test thus holds a request while other clients act, then loses it either way at the moment it chooses.
The request log marks a delay's dropped request as a ``disconnect`` rule's would (``fault``). A
latency's request was processed, and logged, when it arrived: either value only drops its answer.
"""

from __future__ import annotations

import math
import re
import re._constants as sre_constants
import re._parser as sre_parse
import threading
from dataclasses import dataclass
from typing import Any

from airflow_provider_fbca.sandbox.errors import new_fbtrace_id

MAX_DELAY_S = 600.0
MAX_PATH_PATTERN = 200
#: The actions that hold a request, by their field: the rule's kind.
_TIMES_S = {"delay_s": "delay", "latency_s": "latency"}
#: How a held request ends: answered, or dropped unprocessed (``disconnect``) or processed
#: (``disconnect_after``), as the rule kinds of ``disconnect: true`` and ``disconnect: "after"``.
ANSWER, DROP, DROP_AFTER = "answer", "disconnect", "disconnect_after"
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


class FaultRuleError(ValueError):
    """A fault rule that cannot be understood."""


@dataclass
class FaultRule:
    """
    One fault rule.

    :param kind: ``error``, ``disconnect``, ``disconnect_after``, ``delay`` or ``latency``.
    :param method: the HTTP method it applies to (any when None).
    :param path: a regex searched in the URL path (any path when None).
    :param times: how many more requests it applies to.
    :param error: the Graph error object, for ``error``.
    :param http_status: the status of an ``error`` answer.
    :param delay_s: the delay, for ``delay``; the time from arrival to answer, for ``latency``.
    """

    kind: str
    method: str | None = None
    path: re.Pattern[str] | None = None
    times: int = 1
    error: dict[str, Any] | None = None
    http_status: int = 400
    delay_s: float = 0.0

    @classmethod
    def from_json(cls, raw: Any) -> FaultRule:
        """
        Build a rule from its JSON form, refusing ambiguous or malformed rules.

        :param raw: the rule as posted.
        """
        if not isinstance(raw, dict):
            raise FaultRuleError("a fault rule must be an object")
        actions = [
            name
            for name in ("error", "disconnect", "delay_s", "latency_s")
            if name in raw and raw[name] is not None and (name in _TIMES_S or raw[name] is not False)
        ]
        if len(actions) != 1:
            raise FaultRuleError("a fault rule needs exactly one of error, disconnect, delay_s, latency_s")
        times = raw.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise FaultRuleError("times must be a positive integer")
        rule = cls(
            kind=actions[0], times=times, method=_method(raw.get("method")), path=_path(raw.get("path"))
        )
        if rule.kind == "error":
            rule.error, rule.http_status = _error(raw["error"]), _http_status(raw.get("http_status", 400))
        elif rule.kind == "disconnect":
            rule.kind = disconnect_kind(raw["disconnect"])
        else:
            rule.kind, rule.delay_s = _TIMES_S[actions[0]], _delay(actions[0], raw[actions[0]])
        return rule

    def matches(self, method: str, path: str) -> bool:
        """
        Tell whether the rule applies to a request.

        :param method: the request's method (after a ``method=`` override).
        :param path: the URL path.
        """
        if self.times < 1:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path is None or self.path.search(path) is not None

    def error_body(self) -> dict[str, Any]:
        """The envelope of an ``error`` rule, with a trace id like Meta's."""
        assert self.error is not None
        return {"error": {**self.error, "fbtrace_id": self.error.get("fbtrace_id") or new_fbtrace_id()}}

    def describe(self) -> dict[str, Any]:
        """The rule as JSON, for ``GET /_sandbox/faults``."""
        rule: dict[str, Any] = {"kind": self.kind, "times": self.times}
        if self.method:
            rule["method"] = self.method
        if self.path is not None:
            rule["path"] = self.path.pattern
        if self.error is not None:
            rule["error"], rule["http_status"] = self.error, self.http_status
        if self.kind == "delay":
            rule["delay_s"] = self.delay_s
        elif self.kind == "latency":
            rule["latency_s"] = self.delay_s
        return rule


class _Holds:
    """The requests held now, ended together by :meth:`FaultInjector.clear`; and how they end."""

    def __init__(self) -> None:
        self.end = threading.Event()
        self.ending = ANSWER


class FaultInjector:
    """The sandbox's fault rules, safe to use from the server's threads."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._delayed = 0
        self._holds = _Holds()

    def add(self, raw_rules: Any) -> int:
        """
        Append rules given in their JSON form; return how many rules are now active.

        :param raw_rules: a list of rules.
        """
        if not isinstance(raw_rules, list):
            raise FaultRuleError('post {"faults": [rule, ...]}')
        rules = [FaultRule.from_json(raw) for raw in raw_rules]
        with self._lock:
            self._rules.extend(rules)
            return len(self._rules)

    def clear(self, ending: str = ANSWER) -> None:
        """Drop every rule, and end the delays in progress: their requests go on at once, or are dropped.

        :param ending: how the held requests end: :data:`ANSWER` (they go on), :data:`DROP` (closed
            unprocessed) or :data:`DROP_AFTER` (processed, then closed): see :func:`disconnect_kind`.
        """
        with self._lock:
            self._rules.clear()
            self._holds.ending = ending
            self._holds.end.set()
            self._holds = _Holds()

    def delay(self, seconds: float) -> str:
        """Hold a request for ``seconds``, or until :meth:`clear` (counted in :meth:`delayed` meanwhile);
        return how it ends: :data:`ANSWER` when its time ran out, else what :meth:`clear` said.

        :param seconds: the delay rule's ``delay_s`` (what remains of a latency rule's ``latency_s``).
        """
        with self._lock:
            self._delayed += 1
            holds = self._holds
        try:
            # Read once the wait is over: clear() sets the ending before it sets the event.
            return holds.ending if holds.end.wait(seconds) else ANSWER
        finally:
            with self._lock:
                self._delayed -= 1

    def delayed(self) -> int:
        """How many requests a delay (or latency) rule holds right now."""
        with self._lock:
            return self._delayed

    def take(self, method: str, path: str) -> FaultRule | None:
        """
        Return the first rule that applies to a request, spending one of its ``times``.

        :param method: the request's method.
        :param path: the URL path.
        """
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.times -= 1
                    self._rules = [r for r in self._rules if r.times > 0]
                    return rule
        return None

    def describe(self) -> list[dict[str, Any]]:
        """The active rules, as JSON."""
        with self._lock:
            return [rule.describe() for rule in self._rules]


def disconnect_kind(raw: Any) -> str:
    """
    The rule kind a ``disconnect`` value stands for: :data:`DROP` or :data:`DROP_AFTER`.

    :param raw: ``true`` (or ``"before"``): dropped unprocessed; ``"after"``: processed, then dropped.
    """
    if raw not in (True, "after", "before"):
        raise FaultRuleError('disconnect must be true or "after"')
    return DROP_AFTER if raw == "after" else DROP


def release_ending(raw: Any) -> str:
    """
    How ``DELETE /_sandbox/faults`` ends the held requests, from its body's ``disconnect``.

    :param raw: absent (None) or false: answered; else a rule's ``disconnect`` value.
    """
    return ANSWER if raw is None or raw is False else disconnect_kind(raw)


def _method(raw: Any) -> str | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, str):
        raise FaultRuleError("method must be a string")
    return raw.upper()


def _path(raw: Any) -> re.Pattern[str] | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, str) or len(raw) > MAX_PATH_PATTERN:
        raise FaultRuleError(f"path must be a regex of at most {MAX_PATH_PATTERN} characters")
    try:
        parsed = sre_parse.parse(raw)
    except re.error as exc:
        raise FaultRuleError(f"path is not a valid regex: {exc}") from None
    if _is_unbounded(parsed, inside_repeat=False):
        raise FaultRuleError(
            "path must not nest quantifiers or alternations in a quantifier, nor use backreferences (e.g. "
            "(a+)+ or (a|a)*): such a regex can take "
            "exponential time; use a plain prefix or suffix such as /users$"
        )
    return re.compile(raw)


def _is_unbounded(parsed: Any, *, inside_repeat: bool) -> bool:
    """Tell whether a parsed regex nests a repeat or an alternation inside a repeat, or uses a backreference."""
    for op, arg in parsed:
        if op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            return True
        if op in _REPEATS:
            children, nested = [arg[2]], inside_repeat or arg[1] > 1
            if inside_repeat:
                return True
        elif op == sre_constants.BRANCH:
            if inside_repeat:
                return True
            children, nested = list(arg[1]), inside_repeat
        elif op == sre_constants.SUBPATTERN:
            children, nested = [arg[-1]], inside_repeat
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            children, nested = [arg[1]], inside_repeat
        else:
            continue
        if any(_is_unbounded(child, inside_repeat=nested) for child in children):
            return True
    return False


def _delay(name: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise FaultRuleError(f"{name} must be a number of seconds from 0 to {MAX_DELAY_S:g}")
    delay = float(raw)
    if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY_S:
        raise FaultRuleError(f"{name} must be a finite number of seconds from 0 to {MAX_DELAY_S:g}")
    return delay


def _http_status(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 400 <= raw <= 599:
        raise FaultRuleError("http_status must be an integer from 400 to 599")
    return raw


def _error(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or "code" not in raw:
        raise FaultRuleError("error must be a Graph error object with at least a code")
    error = {"message": raw.get("message", "An unexpected error has occurred."), "type": "OAuthException"}
    error.update(raw)
    return error
