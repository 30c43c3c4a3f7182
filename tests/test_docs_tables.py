"""Every markdown table in the repository renders as a table: each row has the header's number
of cells under GitHub-flavoured markdown, where an unescaped ``|`` (even inside a code span)
starts a new cell, so ``||J||_F^2`` must be written ``\\|\\|J\\|\\|_F^2``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_DELIM = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_PIPE = re.compile(r"(?<!\\)\|")


def gfm_cells(line: str) -> int:
    """Number of cells of a GFM table row (leading/trailing pipe optional, ``\\|`` escaped)."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return len(_PIPE.split(s))


def table_errors(text: str, name: str = "") -> list[str]:
    """Rows whose cell count differs from their table's header, outside fenced code blocks."""
    lines = text.splitlines()
    errors, fence, i = [], False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            fence = not fence
        if (not fence and lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and _DELIM.match(lines[i + 1].strip())):
            k = gfm_cells(lines[i])
            if gfm_cells(lines[i + 1]) != k:
                errors.append(f"{name}:{i + 2}: delimiter row does not match the header")
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                if gfm_cells(lines[j]) != k:
                    errors.append(f"{name}:{j + 1}: {gfm_cells(lines[j])} cells, header has {k}")
                j += 1
            i = j
            continue
        i += 1
    return errors


def test_checker_catches_an_unescaped_pipe():
    good = "| a | b |\n|---|---|\n| `\\|\\|J\\|\\|` | 1 |\n"
    assert table_errors(good) == []
    assert table_errors(good.replace("\\|", "|")) != []


MD_FILES = sorted(p for p in ROOT.rglob("*.md")
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


@pytest.mark.parametrize("path", MD_FILES, ids=[str(p.relative_to(ROOT)) for p in MD_FILES])
def test_markdown_tables_render(path):
    assert table_errors(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) == []
