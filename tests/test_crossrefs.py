"""Cross-references in the book stay honest: chapters, sections and ``ecrec`` names that prose points to exist.

Cheap (no chapter is executed): the chapters' jupytext sources
``notebooks/NN_slug.py``, the worked solutions and the README are read as
text. Every chapter found is checked, so a chapter added later (06, 07, ...)
is held to the same rules as soon as its file exists, and one that does not
exist yet is simply not checked.

* "chapter NN" / "chapters NN and MM" names a chapter with a notebook;
* "section N.k" / "section N.k.m" names a heading of chapter N;
* every ``ecrec.module.name`` written in backticks in a chapter's markdown or
  in the README is importable (a module, or an attribute of one);
* headings follow the book's one numbering scheme: the title
  ``# N. Title``; sections ``## N.k Title`` with k = 1, 2, ...; subsections
  ``### N.k.m Title`` with m = 1, 2, ... within their section; unnumbered
  ``## Summary`` then ``## Exercises`` at the end; ``## Part A — Title``
  (a capital letter and a dash) may group sections without interrupting
  their numbering.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.py"))
CHAPTER_NUMBERS = {int(p.name[:2]) for p in CHAPTERS}
PROSE = [*CHAPTERS, *sorted(ROOT.glob("notebooks/solutions/*.py")), ROOT / "README.md"]

CHAPTER_REF = re.compile(
    r"\b[Cc]hapters?\s+(\d{1,2}(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s+to\s+|\s*[-–]\s*)\d{1,2}\b)*)(?![.\d])")
SECTION_REF = re.compile(r"\b[Ss]ections?\s+(\d{1,2})\.(\d{1,2})(?:\.(\d{1,2}))?\b")
ECREC_NAME = re.compile(r"\becrec(?:\.[A-Za-z_]\w*)+")
INLINE_CODE = re.compile(r"`([^`\n]+)`")

TITLE = re.compile(r"^# (\d+)\. \S")
SECTION = re.compile(r"^## (\d+)\.(\d+) \S")
SUBSECTION = re.compile(r"^### (\d+)\.(\d+)\.(\d+) \S")
PART = re.compile(r"^## Part [A-Z] — \S")
END_SECTIONS = ["## Summary", "## Exercises"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _markdown_cells(path: Path) -> list[str]:
    """The markdown cells of a jupytext percent-format chapter, as markdown text."""
    import jupytext

    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "markdown"]


def _heading_lines(path: Path) -> list[str]:
    """Every markdown heading line of a chapter, in order, skipping fenced code blocks."""
    out = []
    for source in _markdown_cells(path):
        fenced = False
        for line in source.splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line):
                out.append(line.rstrip())
    return out


def test_chapters_found():
    assert CHAPTERS, "no notebooks/NN_slug.py found"
    assert {1, 2, 3, 4, 5} <= CHAPTER_NUMBERS


@pytest.mark.parametrize("path", PROSE, ids=_rel)
def test_chapter_references_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for match in CHAPTER_REF.finditer(text):
        for number in re.findall(r"\d{1,2}", match.group(1)):
            if int(number) not in CHAPTER_NUMBERS:
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"line {line}: {match.group(0)!r} (no notebooks/{int(number):02d}_*.py)")
    assert not missing, f"{_rel(path)} refers to chapters that do not exist:\n" + "\n".join(missing)


def _section_numbers(path: Path) -> set[str]:
    numbers = set()
    for line in _heading_lines(path):
        m = SUBSECTION.match(line) or SECTION.match(line)
        if m:
            numbers.add(".".join(m.groups()))
    return numbers


@pytest.mark.parametrize("path", PROSE, ids=_rel)
def test_section_references_exist(path):
    by_number = {int(p.name[:2]): p for p in CHAPTERS}
    text = path.read_text(encoding="utf-8")
    missing = []
    for match in SECTION_REF.finditer(text):
        chapter = int(match.group(1))
        number = ".".join(g for g in match.groups() if g is not None)
        target = by_number.get(chapter)
        if target is None or number not in _section_numbers(target):
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"line {line}: {match.group(0)!r} (no heading {number} in chapter {chapter:02d})")
    assert not missing, f"{_rel(path)} refers to sections that do not exist:\n" + "\n".join(missing)


def _resolve(name: str) -> bool:
    """True if ``name`` (``ecrec.a.b.c``) is a module or an attribute reachable from one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("path", [*CHAPTERS, ROOT / "README.md"], ids=_rel)
def test_ecrec_names_in_backticks_exist(path):
    texts = _markdown_cells(path) if path.suffix == ".py" else [path.read_text(encoding="utf-8")]
    names = {name for text in texts for code in INLINE_CODE.findall(text) for name in ECREC_NAME.findall(code)}
    missing = sorted(name for name in names if not _resolve(name))
    assert not missing, f"{_rel(path)} names ecrec objects that do not exist: {missing}"


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_heading_scheme(path):
    n = int(path.name[:2])
    headings = _heading_lines(path)
    problems = []
    titles = [h for h in headings if h.startswith("# ")]
    if not headings or not TITLE.match(headings[0]) or int(TITLE.match(headings[0]).group(1)) != n:
        problems.append(f"the first heading must be the title '# {n}. Title', got {headings[:1]}")
    if len(titles) != 1:
        problems.append(f"one title ('# ...') per chapter, got {titles}")
    section, subsection, ended = 0, 0, []
    for h in headings[1:]:
        if h.startswith("# "):
            continue  # reported above
        if h.startswith("## "):
            if h in END_SECTIONS:
                ended.append(h)
                continue
            if ended:
                problems.append(f"{h!r} comes after {ended[-1]!r}: Summary and Exercises end the chapter")
            if PART.match(h):
                continue
            m = SECTION.match(h)
            if not m or int(m.group(1)) != n or int(m.group(2)) != section + 1:
                problems.append(f"{h!r}: expected '## {n}.{section + 1} Title'")
            else:
                section, subsection = section + 1, 0
        elif h.startswith("### "):
            m = SUBSECTION.match(h)
            expected = f"### {n}.{section}.{subsection + 1} Title"
            if ended or not m or [int(g) for g in m.groups()] != [n, section, subsection + 1]:
                problems.append(f"{h!r}: expected {expected!r}")
            else:
                subsection += 1
    if ended != END_SECTIONS:
        problems.append(f"the chapter must end with {END_SECTIONS}, got {ended}")
    if section == 0:
        problems.append("no numbered section ('## N.1 Title')")
    assert not problems, f"{_rel(path)}:\n" + "\n".join(problems)
