"""README.md and docs/*.md: every relative link resolves, every #anchor names a heading of its target, and every
```python block parses.

- A link resolves when its target (a file or a folder, relative to the page) exists in the working tree.
- Anchors use GitHub's heading slugs: the heading's text (inline code and links reduced to their text) lowercased,
  every character that is not a letter, digit, space, '-' or '_' dropped, spaces turned into '-'; a repeated
  slug gets '-1', '-2', ... in order.
- Links and headings inside fenced code blocks and inline code spans do not count. Absolute URLs (http:, https:,
  mailto:) are not checked.
- Every docs page is linked from README.md's "Where to read more".
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code spans blanked out."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return out


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = INLINE_CODE.sub(lambda m: m.group(2), text)  # inline code: its content
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # html tags
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            s = slug(m.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in prose_lines(path.read_text()) for m in LINK.finditer(line)]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """'page:line: target (why)' for each link of the page (under `root`) that does not resolve."""
    problems = []
    for n, target in links(path):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where} (no heading with slug '{anchor}' in {dest.name})")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    assert not broken_links(page), "\n".join(broken_links(page))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_parse(page):
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    for code in blocks:
        ast.parse(code)


def test_every_docs_page_is_linked_from_the_readme():
    readme = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in readme]
    assert not missing, f"README.md does not link {missing}"


def test_checker_catches_broken_links(tmp_path):
    """The checker itself: a missing file, a missing anchor, and an anchor in the same page fail; good ones pass;
    a link inside code does not count."""
    (tmp_path / "b.md").write_text("# Hugging Face `generate`\n\n## Data and splits\n\n## Data and splits\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# Top\n\n[ok](b.md#hugging-face-generate) [ok](b.md#data-and-splits-1) [ok](#top) [ok](b.md)\n"
        "[web](https://example.com/x.md) `[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n"
        "[bad file](c.md) [bad anchor](b.md#nope) [bad local](#bottom)\n")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == ["c.md", "b.md#nope", "#bottom"], problems
