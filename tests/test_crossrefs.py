"""Cross-references in the book stay honest: chapters, sections and ``ecrec`` names that prose points to exist.

Cheap (no chapter is executed): the chapters' jupytext sources
``notebooks/NN_slug.py``, the worked solutions and the README are read as
text. Every chapter found is checked, so a chapter added later (06, 07, ...)
is held to the same rules as soon as its file exists, and one that does not
exist yet is simply not checked.

* "chapter NN" / "chapters NN and MM" names a chapter with a notebook;
  "appendix A" names an appendix (``notebooks/A1_slug.py``: letter A);
* "section N.k" / "section N.k.m" / "§N.k" (also in lists and ranges:
  "sections 6.10-6.19", "§§4.2 and 4.3") names a heading of chapter N, in
  markdown and in code strings alike;
* "exercise k" / "exercises 1 and 2" / "exercise B3" names an item of the
  chapter's own ``## Exercises`` list (a solutions file
  ``solutions/NN*_exercises.py``: chapter NN's list; "chapter NN's exercise k":
  chapter NN's);
* a counted list ("Three checks ...:", "Four baselines ...:") has as many
  items as it announces: a paragraph ending in ":" whose last sentence holds
  one count word (two .. twelve) and is followed by a markdown list;
* every ``ecrec.module.name`` written in backticks in a chapter's markdown or
  in the README is importable (a module, or an attribute of one);
* headings follow the book's one numbering scheme: the title
  ``# N. Title``; sections ``## N.k Title`` with k = 1, 2, ...; subsections
  ``### N.k.m Title`` with m = 1, 2, ... within their section; unnumbered
  ``## Summary`` then ``## Exercises`` at the end; ``## Part A — Title``
  (a capital letter and a dash) may group sections without interrupting
  their numbering. An appendix ``notebooks/A1_slug.py`` follows the same
  scheme with its letter for N: ``# A. Title``, ``## A.k Title``, and
  "section A.k" refers to it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.py")) + sorted(ROOT.glob("notebooks/[A-Z][0-9]_*.py"))


def _label(path: Path) -> str:
    """A chapter's number as its headings write it ("6" for 06_multitask.py) or an appendix's letter ("A")."""
    return path.name[0] if path.name[0].isalpha() else str(int(path.name[:2]))


CHAPTER_NUMBERS = {int(p.name[:2]) for p in CHAPTERS if not p.name[0].isalpha()}
APPENDIX_LETTERS = {p.name[0] for p in CHAPTERS if p.name[0].isalpha()}
PROSE = [*CHAPTERS, *sorted(ROOT.glob("notebooks/solutions/*.py")), ROOT / "README.md"]

CHAPTER_REF = re.compile(
    r"\b[Cc]hapters?\s+(\d{1,2}(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s+to\s+|\s*[-–]\s*)\d{1,2}\b)*)(?!\.?\d)")
SECTION_NUMBER = r"(?:\d{1,2}|[A-Z])\.\d{1,2}(?:\.\d{1,2})?"
SECTION_REF = re.compile(
    rf"(?:\b[Ss]ections?\s+|§§?\s*)({SECTION_NUMBER}(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s+to\s+|\s*[-–]\s*)"
    rf"{SECTION_NUMBER})*)(?!\.?\d)")
EXERCISE_REF = re.compile(
    r"\b(?:(?:[Cc]hapter\s+(\d{1,2})'s\s+)?)[Ee]xercises?\s+([A-Z]?\d{1,2}(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s+to\s+"
    r"|\s*[-–]\s*)[A-Z]?\d{1,2})*)\b(?!\.?\d)")
APPENDIX_REF = re.compile(r"\b[Aa]ppendix\s+([A-Z])\b")
COUNT_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split()) if i >= 2}
COUNT_WORD = re.compile(r"\b(" + "|".join(COUNT_WORDS) + r")\b(?!-)", re.IGNORECASE)
LIST_ITEM = re.compile(r"^(?:[*+-]|\d+[.)])\s+\S")
ECREC_NAME = re.compile(r"\becrec(?:\.[A-Za-z_]\w*)+")
INLINE_CODE = re.compile(r"`([^`\n]+)`")

TITLE = re.compile(r"^# (\d+|[A-Z])\. \S")
SECTION = re.compile(r"^## (\d+|[A-Z])\.(\d+) \S")
SUBSECTION = re.compile(r"^### (\d+|[A-Z])\.(\d+)\.(\d+) \S")
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
    for match in APPENDIX_REF.finditer(text):
        if match.group(1) not in APPENDIX_LETTERS:
            missing.append(f"line {_line_of(text, match.start())}: {match.group(0)!r} "
                           f"(no notebooks/{match.group(1)}[0-9]_*.py)")
    assert not missing, f"{_rel(path)} refers to chapters that do not exist:\n" + "\n".join(missing)


def _section_numbers(path: Path) -> set[str]:
    numbers = set()
    for line in _heading_lines(path):
        m = SUBSECTION.match(line) or SECTION.match(line)
        if m:
            numbers.add(".".join(m.groups()))
    return numbers


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@pytest.mark.parametrize("path", PROSE, ids=_rel)
def test_section_references_exist(path):
    by_label = {_label(p): p for p in CHAPTERS}
    text = path.read_text(encoding="utf-8")
    missing = []
    for match in SECTION_REF.finditer(text):
        for number in re.findall(SECTION_NUMBER, match.group(1)):
            chapter = number.split(".")[0]
            target = by_label.get(chapter)
            if target is None or number not in _section_numbers(target):
                missing.append(f"line {_line_of(text, match.start())}: {match.group(0)!r} "
                               f"(no heading {number} in {target.stem if target else 'any chapter'})")
    assert not missing, f"{_rel(path)} refers to sections that do not exist:\n" + "\n".join(missing)


def _exercise_labels(path: Path) -> set[str]:
    """The item numbers ("1", "2", ...) of a chapter's ``## Exercises`` list (top-level items only)."""
    labels, inside = set(), False
    for source in _markdown_cells(path):
        for line in source.splitlines():
            if line.startswith("## "):
                inside = line.rstrip() == "## Exercises"
            elif inside and (m := re.match(r"(\d+)[.)]\s", line)):
                labels.add(m.group(1))
    return labels


def _own_chapter(path: Path) -> str | None:
    """The chapter whose exercises a file's bare "exercise k" means ("6", "A"; None: the README, no chapter)."""
    m = re.match(r"(\d\d|[A-Z]\d)_", path.name)
    return _label(path) if m and path.parent.name in ("notebooks", "solutions") else None


@pytest.mark.parametrize("path", PROSE, ids=_rel)
def test_exercise_references_exist(path):
    by_label = {_label(p): p for p in CHAPTERS}
    text = path.read_text(encoding="utf-8")
    own = _own_chapter(path)
    missing = []
    for match in EXERCISE_REF.finditer(text):
        chapter = str(int(match.group(1))) if match.group(1) else own
        if chapter is None:
            continue
        target = by_label.get(chapter)
        labels = _exercise_labels(target) if target else set()
        for label in re.findall(r"[A-Z]?\d{1,2}", match.group(2)):
            if label not in labels:
                missing.append(f"line {_line_of(text, match.start())}: {match.group(0)!r} ({chapter}'s "
                               f"exercises are {sorted(labels, key=int) or 'none'})")
    assert not missing, f"{_rel(path)} refers to exercises that do not exist:\n" + "\n".join(missing)


def counted_list_mismatches(markdown: str) -> list[tuple[int, str, int, int]]:
    """``(line, sentence, announced, listed)`` for each counted list whose length differs from its count.

    A counted list is a paragraph ending in ":" whose last sentence holds exactly
    one count word ("Three checks, before any comparison:") and that is followed
    (after at most one blank line) by a markdown list; its top-level items are
    counted, nested items and continuation lines are not.
    """
    lines = markdown.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].rstrip().endswith(":") or LIST_ITEM.match(lines[i].lstrip()):
            i += 1
            continue
        start = i
        while start > 0 and lines[start - 1].strip() and not LIST_ITEM.match(lines[start - 1].lstrip()):
            start -= 1
        paragraph = " ".join(x.strip() for x in lines[start:i + 1])
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z*`$])", paragraph)[-1]
        counts = COUNT_WORD.findall(sentence)
        j = i + 1
        if j < len(lines) and not lines[j].strip():
            j += 1
        if len(counts) != 1 or j >= len(lines) or not LIST_ITEM.match(lines[j]):
            i += 1
            continue
        items = 0
        while j < len(lines) and (lines[j].strip() == "" or lines[j].startswith((" ", "\t")) or LIST_ITEM.match(lines[j])):
            if LIST_ITEM.match(lines[j]):
                items += 1
            if not lines[j].strip() and (j + 1 >= len(lines) or not (LIST_ITEM.match(lines[j + 1])
                                                                    or lines[j + 1].startswith((" ", "\t")))):
                break
            j += 1
        announced = COUNT_WORDS[counts[0].lower()]
        if items != announced:
            out.append((i + 1, sentence, announced, items))
        i = j
    return out


def test_counted_list_detector():
    ok = "Three checks:\n\n1. a\n2. b\n   more of b\n3. c\n\nAfter."
    bad = "Intro. Four baselines, from none to all:\n\n* one\n* two\n  * nested\n* three\n\n" \
          "Two views (see above):\n- x\n"
    assert counted_list_mismatches(ok) == []
    assert [(n, listed) for _, _, n, listed in counted_list_mismatches(bad)] == [(4, 3), (2, 1)]
    # two count words in the sentence, or no list after the colon: not a counted list
    assert counted_list_mismatches("Two tasks, three labels:\n\n* a\n") == []
    assert counted_list_mismatches("Three checks: the first in prose.\n") == []


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_counted_lists_match_their_count(path):
    text = path.read_text(encoding="utf-8")
    problems = []
    for source in _markdown_cells(path):
        for _, sentence, announced, listed in counted_list_mismatches(source):
            first = sentence.split()[0:4]
            line = next((k + 1 for k, x in enumerate(text.splitlines()) if " ".join(first) in x), 0)
            problems.append(f"line {line}: {sentence!r} announces {announced}, lists {listed}")
    assert not problems, f"{_rel(path)} has counted lists of another length:\n" + "\n".join(problems)


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
    n = _label(path)
    headings = _heading_lines(path)
    problems = []
    titles = [h for h in headings if h.startswith("# ")]
    if not headings or not TITLE.match(headings[0]) or TITLE.match(headings[0]).group(1) != n:
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
            if not m or m.group(1) != n or int(m.group(2)) != section + 1:
                problems.append(f"{h!r}: expected '## {n}.{section + 1} Title'")
            else:
                section, subsection = section + 1, 0
        elif h.startswith("### "):
            m = SUBSECTION.match(h)
            expected = f"### {n}.{section}.{subsection + 1} Title"
            if ended or not m or list(m.groups()) != [n, str(section), str(subsection + 1)]:
                problems.append(f"{h!r}: expected {expected!r}")
            else:
                subsection += 1
    if ended != END_SECTIONS:
        problems.append(f"the chapter must end with {END_SECTIONS}, got {ended}")
    if section == 0:
        problems.append("no numbered section ('## N.1 Title')")
    assert not problems, f"{_rel(path)}:\n" + "\n".join(problems)


def test_reference_patterns():
    sections = [re.findall(SECTION_NUMBER, m.group(1)) for m in SECTION_REF.finditer(
        "See section 6.19. Also §4.10, §§5.2 and 5.3, sections 6.10-6.19; chapter 3.2 is not one.")]
    assert sections == [["6.19"], ["4.10"], ["5.2", "5.3"], ["6.10", "6.19"]]
    appendix = [re.findall(SECTION_NUMBER, m.group(1)) for m in SECTION_REF.finditer("section A.3 and §A.1.2")]
    assert appendix == [["A.3"], ["A.1.2"]]
    assert [m.group(1) for m in APPENDIX_REF.finditer("appendix A; Appendix B, appendixes")] == ["A", "B"]
    exercises = [(m.group(1), m.group(2)) for m in EXERCISE_REF.finditer(
        "(An ordinal head is exercise B3.) Exercises 1 and 2; chapter 03's exercise 7, exercise 1.5 is not one.")]
    assert exercises == [(None, "B3"), (None, "1 and 2"), ("03", "7")]
    chapters = [m.group(1) for m in CHAPTER_REF.finditer("as in chapter 03. Chapters 04 and 05, chapter 3.2")]
    assert chapters == ["03", "04 and 05"]
