"""The docs pages are part of the front door: their Python examples run as written, their
shell examples use only folders an earlier example made, every relative link in them and in
the README points to a file that exists, and counts they state match the repository."""
import importlib.util
import re
import subprocess

import pytest

from jaxformer_testing.docs import (README, ROOT, doc_pages, fenced_blocks, link_problems,
                                    run_python_blocks, shell_problems)

PAGES_WITH_PYTHON = [p for p in doc_pages() if fenced_blocks(p, "python")]

#: Pages whose examples need an optional extra: skipped when it is not installed.
NEEDS = {}


def test_the_topic_pages_exist():
    names = {p.name for p in doc_pages()}
    for page in ("training", "generation", "looking-inside", "intervening", "open-models",
                 "large-corpora", "performance", "performance-gpu", "scaling-out", "reliability",
                 "functional-api", "architecture", "experiments"):
        assert f"{page}.md" in names, page
    assert len(PAGES_WITH_PYTHON) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda p: p.stem)
def test_docs_python_blocks_run_top_to_bottom(page, tmp_path):
    """Every ```python block of a page, in order, in one fresh interpreter, in an empty folder."""
    for module in NEEDS.get(page.stem, ()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{page.name} needs {module} (an optional extra)")
    proc = run_python_blocks(page, tmp_path)
    assert proc.returncode == 0, f"{page.name} python blocks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_docs_shell_examples_use_folders_made_earlier(page):
    """As the README's: a page may use what the README's commands made, and its own."""
    made = set()
    shell_problems(README, made)
    problems = shell_problems(page, made)
    assert not problems, "\n".join(problems)


def test_relative_links_point_to_files_that_exist():
    problems = []
    for path in [README, ROOT / "CHANGELOG.md", *doc_pages()]:
        problems += link_problems(path)
    assert not problems, "\n".join(problems)


def test_link_checker_catches_a_missing_file(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[ok](there.md) [web](https://example.org/x.md) [anchor](#a) [bad](missing.md#b)\n")
    assert [p.split(": ", 1)[1] for p in link_problems_in(page)] == ["missing.md#b does not exist"]


def link_problems_in(page):
    """``link_problems`` for a page outside the repository (paths reported by name)."""
    import jaxformer_testing.docs as docs
    root = docs.ROOT
    docs.ROOT = page.parent
    try:
        return docs.link_problems(page)
    finally:
        docs.ROOT = root


def test_stated_counts_match_the_repository():
    """The number of experiments ("01-08"), and no stale line counts of the textbook."""
    labs = sorted(p.name[:2] for p in (ROOT / "experiments").glob("[0-9][0-9]_*.py"))
    for path in [README, *doc_pages()]:
        text = path.read_text(encoding="utf-8")
        for first, last in re.findall(r"\b(0\d)\s*(?:-|–|to)\s*`?(0\d)\b", text):
            assert (first, last) == (labs[0], labs[-1]), f"{path.name}: labs {first}-{last}, there are {labs[0]}-{labs[-1]}"
        assert not re.search(r"functional\.py`?\s*\(\d+ lines", text), f"{path.name} states a line count"


def test_tinyshakespeare_is_never_in_the_repository():
    """The tests read ../shared/data/tinyshakespeare.txt where it is; it is never copied in."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert not [f for f in files if "tinyshakespeare" in f.lower()]
