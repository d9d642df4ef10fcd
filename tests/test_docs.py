"""The README and the docs pages link only to files inside the repository, and every link resolves:
a clone without ``../shared`` has every page the README points to, and an anchor names a heading
of its page (GitHub's slugs), so a moved section cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are not links."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)}


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z]+:", t)]


def broken(page: Path) -> list[str]:
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with this anchor in {dest.relative_to(ROOT)}")
    return bad


def test_the_link_checker_finds_each_kind_of_dead_link(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A page\n\n## `make repro` on three CPUs\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#make-repro-on-three-cpus) [ok](#title) [web](https://x.org/y)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](docs/b.md) [anchor](docs/a.md#a-section) [spec](../shared/docs/method.md)\n# Title\n")
    assert broken(page) == [
        "docs/b.md: no such file",
        "docs/a.md#a-section: no heading with this anchor in docs/a.md",
        "../shared/docs/method.md: outside the repository",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_the_readme_and_the_docs_resolves_inside_the_repository(page):
    assert broken(page) == [], f"{page.relative_to(ROOT)} has dead links"


def test_the_readme_links_to_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert unlinked == [], "docs pages that no README link reaches"


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    return section[section.index("```"):section.index("```", section.index("```") + 3)]


LISTED_PACKAGES = ("methods", "data", "engine", "evaluation", "reference", "tuning", "params")


def test_the_readme_layout_names_every_part_of_the_package_and_nothing_that_is_gone():
    """The Layout section matches the tree: every module and folder of ``pipeline/`` is named, and
    every module of the library packages (stages/ and bench/ are entry points, named by their
    commands); every ``name.py`` the section names exists under the package it is listed in."""
    block = layout_block()
    package = ROOT / "pipeline"
    top = [p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
           if p.name not in ("__init__.py", "__pycache__")]
    assert [name for name in top if not re.search(rf"(?m)^  {re.escape(name)}\s", block)] == []
    current = None
    named: dict[str, set[str]] = {}
    for line in block.splitlines():
        if m := re.match(r"^  (\w+)/\s", line):
            current = m.group(1)
        elif re.match(r"^  \w", line) or not line.startswith("  "):
            current = None
        if current:
            named.setdefault(current, set()).update(re.findall(r"\b(\w+\.py)\b", line))
    for sub in LISTED_PACKAGES:
        modules = {p.name for p in (package / sub).glob("*.py") if p.name != "__init__.py"}
        assert sorted(modules - named.get(sub, set())) == [], f"pipeline/{sub}/ modules the Layout does not name"
        assert sorted(named.get(sub, set()) - modules) == [], f"pipeline/{sub}/ modules the Layout names that are gone"


def test_the_readme_layout_names_every_params_file():
    """The Layout's ``params/`` line names each file of ``params/`` (and none that is gone)."""
    line, = (line for line in layout_block().splitlines() if line.startswith("params/"))
    assert set(re.findall(r"\b(\w+\.yaml)\b", line)) == {p.name for p in (ROOT / "params").glob("*.yaml")}


def test_the_docs_repeat_the_readmes_view_of_the_experiments():
    """The ``dvc exp show --only-changed`` line that tests/stages/test_dvc_experiments.py runs is the
    README's; a page that shows it shows the same line."""
    views = {p.relative_to(ROOT).as_posix(): [line for line in p.read_text().splitlines()
                                              if line.startswith("dvc exp show --only-changed")] for p in PAGES}
    readme, = views.pop("README.md")
    assert {page: found for page, found in views.items() if found not in ([], [readme])} == {}
    assert [page for page, found in views.items() if found] == ["docs/pipeline.md", "docs/scaling-out.md"]


def test_the_readme_is_a_manual_of_at_most_25_kb():
    """Measurement logs and detail belong in docs/ pages the README links (issue 32, item 5)."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 25_000, f"README.md is {size} bytes: move detail to a docs page and link it"
