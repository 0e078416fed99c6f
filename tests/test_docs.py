"""The docs stay short at the front and hold together: README.md is at most 200 lines, every relative
link of the README and the docs pages reaches a file (and, for ``#anchor``, a heading of it), and every
repository path a page names in backticks exists. Plain file reading, a fraction of a second."""
import glob
import os
import re

import pytest

from conftest import ROOT

README_MAX_LINES = 200
PAGES = ["README.md", "benchmarks/README.md", "datasets/README.md",
         *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# a backticked repository path: a top-level folder of this repository, then plain path characters
REPO_PATH = re.compile(r"(?:configs|seg_ssl|tools|datasets|benchmarks|tests|docs)/[\w./-]*[\w/]")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a link or path inside one is an example, not a reference)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped (``_`` and
    ``-`` kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated heading gets -1, -2 ... as on GitHub."""
    with open(path, encoding="utf-8") as f:
        headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(f.read()), flags=re.M)
    seen, out = {}, set()
    for h in headings:
        base = slug(h)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: str) -> list[str]:
    """``page: target (why)`` for each relative link of a Markdown file that leads nowhere."""
    with open(page, encoding="utf-8") as f:
        text = CODE_SPAN.sub("", prose(f.read()))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(dest):
            problems.append(f"{page}: {target} (no file {os.path.relpath(dest, ROOT)})")
        elif anchor and (not dest.endswith(".md") or anchor not in anchors(dest)):
            problems.append(f"{page}: {target} (no heading #{anchor} in {os.path.relpath(dest, ROOT)})")
    return problems


def missing_paths(page: str) -> list[str]:
    """``page: path`` for each backticked repository path that does not exist."""
    with open(page, encoding="utf-8") as f:
        spans = CODE_SPAN.findall(prose(f.read()))
    return [f"{page}: {s}" for s in spans
            if REPO_PATH.fullmatch(s) and not os.path.exists(os.path.join(ROOT, s))]


def test_readme_is_at_most_200_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move details to docs/"


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_reaches_a_file_and_heading(page):
    assert broken_links(os.path.join(ROOT, page)) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_backticked_repository_path_exists(page):
    assert missing_paths(os.path.join(ROOT, page)) == []


def test_the_checks_find_a_missing_file_heading_and_path(tmp_path):
    heading = "Speed options (`train.amp`; issue 28)"  # GitHub: speed-options-trainamp-issue-28
    (tmp_path / "other.md").write_text(f"# {heading}\n\n## {heading}\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n"
        "[ok](other.md#speed-options-trainamp-issue-28)\n"
        "[ok, the repeat](other.md#speed-options-trainamp-issue-28-1)\n"
        "[ok, here](#a-page) [web](https://example.com/x.md) `[not a link](gone.md)`\n"
        "[gone](gone.md) [no heading](other.md#speed-options) [no heading here](#b-page)\n"
        "`configs/voc_cps.yaml` `configs/voc_nothing.yaml` `configs/{a,b}.yaml` `tools/train.py CONFIG`\n"
        "```\n[in a code block](gone.md) `configs/nothing.yaml`\n```\n")
    problems = broken_links(str(page))
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "gone.md", "other.md#speed-options", "#b-page"]
    assert [p.split(": ", 1)[1] for p in missing_paths(str(page))] == ["configs/voc_nothing.yaml"]
