"""The error a SQL user sees: what is wrong, where (line and column), and what to write instead."""

from __future__ import annotations

from sabot.errors import SabotError


def position(node):
    """``(line, col)`` of the first token of ``node`` that the parser located, else ``(None, None)``."""
    if node is None:
        return None, None
    for n in node.walk() if hasattr(node, "walk") else ():
        meta = getattr(n, "_meta", None) or {}
        if meta.get("line") is not None:
            line, col = meta["line"], meta.get("col")
            # sqlglot's col is where the token ends; report where it starts
            if meta.get("start") is not None and meta.get("end") is not None and col is not None:
                col = col - (meta["end"] - meta["start"])
            return line, col
    return None, None


class SqlError(SabotError, ValueError):
    """A statement Sabot cannot run: ``line``/``col`` (1-based) of the offending token, ``hint``
    what is supported instead. ``str()`` shows all three and the line of text."""

    def __init__(self, message, *, text=None, node=None, line=None, col=None, hint=None):
        if node is not None and line is None:
            line, col = position(node)
        self.message = message
        self.line = line
        self.col = col
        self.hint = hint
        where = f"line {line}, column {col}: " if line is not None else ""
        parts = [where + message]
        if text is not None and line is not None:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                parts.append("  " + lines[line - 1])
                if col is not None and col > 0:
                    parts.append("  " + " " * (col - 1) + "^")
        if hint:
            parts.append(hint)
        super().__init__("\n".join(parts))
