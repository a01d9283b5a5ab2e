"""Docstrings (reStructuredText, as Sphinx reads them) as plain text for a terminal:
``mnemoscope methods NAME`` prints an estimator's description with it."""

from __future__ import annotations

import inspect
import re
import textwrap

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")  # :class:`~a.B` → B
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_INTERPRETED = re.compile(r"(?<![\w`])`([^`]+)`_{0,2}(?![\w`])")
_BULLET = re.compile(r"^(\s*)([-*•]|\d+[.)])\s+")


def _inline(text: str) -> str:
    def last_part(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        return name.rsplit(".", 1)[-1] if match.group(0).count("~") else name

    text = _ROLE.sub(last_part, text)
    text = _LITERAL.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return _INTERPRETED.sub(r"\1", text)


def _blocks(doc: str) -> list[list[str]]:
    blocks: list[list[str]] = [[]]
    for line in doc.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def rst_to_text(doc: str, width: int = 88) -> str:
    """``doc`` without reStructuredText markup, its paragraphs and list items re-wrapped
    to ``width`` columns; indented blocks (code, ``.. math::``) are kept line by line,
    indented by four spaces."""
    out: list[str] = []
    for block in _blocks(inspect.cleandoc(doc)):
        first = block[0]
        if first.lstrip().startswith(".. "):  # a directive: its body, indented
            body = [line.strip() for line in block[1:]]
            head = first.lstrip()[3:].split("::", 1)
            title = head[1].strip() if len(head) > 1 else ""
            out.append(
                "\n".join("    " + _inline(line) for line in ([title] if title else []) + body)
            )
            continue
        if all(line.startswith((" ", "\t")) for line in block):
            out.append("\n".join("    " + _inline(line.strip()) for line in block))
            continue
        items: list[tuple[str, list[str]]] = []
        for line in block:
            bullet = _BULLET.match(line)
            if bullet or not items:
                marker = bullet.group(2) + " " if bullet else ""
                items.append((marker, [line[bullet.end() :] if bullet else line.strip()]))
            else:
                items[-1][1].append(line.strip())
        paragraph = []
        for marker, lines in items:
            text = _inline(" ".join(lines))
            if text.endswith("::"):
                text = text[:-1]  # "as follows::" introduces a literal block
            paragraph.append(
                textwrap.fill(
                    text,
                    width=width,
                    initial_indent=marker,
                    subsequent_indent=" " * len(marker),
                    break_on_hyphens=False,
                )
            )
        out.append("\n".join(paragraph))
    return "\n\n".join(out)
