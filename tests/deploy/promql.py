"""A PromQL tokenizer just good enough to list an expression's vector selectors (no parser in Python)."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      |(?P<labels>\{[^}]*\})
      |(?P<range>\[[^\]]*\])
      |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[smhdwy]*)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<open>\()
      |(?P<close>\))
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.X | re.S,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATORS = {"and", "or", "unless", "offset", "bool"}


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (metric name + matchers), ranges and offsets dropped."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _GROUPING:
            if nxt[0] == "open":  # skip the label list
                while i < len(tokens) and tokens[i][0] != "close":
                    i += 1
        elif kind == "ident" and text not in _OPERATORS and nxt[0] != "open" and nxt[1] not in _GROUPING:
            # not a function call nor an aggregation (`sum by (...) (...)`)
            out.append(text + (nxt[1] if nxt[0] == "labels" else ""))
        elif kind == "labels" and (i == 0 or tokens[i - 1][0] != "ident"):
            out.append(text)
        i += 1
    return list(dict.fromkeys(out))


_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


def matchers(selector: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of each matcher of a selector such as ``m{a=~"x", b="y"}``."""
    _, _, body = selector.partition("{")
    body = body.rstrip("}")
    return [(m.group(1), m.group(2), m.group(3)) for part in body.split(",") if (m := _MATCHER.fullmatch(part))]
