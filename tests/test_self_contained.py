"""The repository explains itself: nothing in it points outside it, every link inside it
resolves, and every docs page the code and the CLI name exists (issue 19)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: files whose bytes are not text a person follows links in
BINARY = (".png", ".svg", ".ico", ".gz", ".whl", ".pyc")


def tracked_files() -> list[Path]:
    """The files of the repository: git's list in a checkout, else every file but caches and the venv."""
    if (ROOT / ".git").exists():
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / n for n in names.decode().split("\0") if n and (ROOT / n).is_file()]
    skip = {".venv", ".git", "out", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def texts() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8", errors="replace")) for p in tracked_files()
            if p.suffix not in BINARY]


# what points outside: the old contract beside the repository, the machine's own folders
OUTSIDE = re.compile(r"\.\./shared|/wor[k]/|/far[m]/|MODEL\.md|shared/research")


def test_no_tracked_file_points_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
             for p, text in texts() if p.name != Path(__file__).name
             for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_markdown_resolves_inside_the_repository():
    broken = []
    for path, text in texts():
        if path.suffix != ".md":
            continue
        for target in MD_LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, or a heading on the same page
            file = (path.parent / target.split("#")[0]).resolve()
            if not file.exists() or ROOT not in file.parents and file != ROOT:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        base, n = slug, 1
        while slug in found:  # a repeated heading gets -1, -2, ...
            slug, n = f"{base}-{n}", n + 1
        found.add(slug)
    return found


def test_every_anchor_in_the_markdown_names_a_heading():
    """`#4-load-test-the-lab` and `model.md#4-backoff-policies` point at headings that exist."""
    pages = {path: text for path, text in texts() if path.suffix == ".md"}
    anchors = {path.resolve(): _anchors(text) for path, text in pages.items()}
    broken = []
    for path, text in pages.items():
        for target in MD_LINK.findall(text):
            if re.match(r"[a-z]+:", target) or "#" not in target:
                continue
            page, anchor = target.split("#", 1)
            file = (path.parent / page).resolve() if page else path.resolve()
            if file in anchors and anchor not in anchors[file]:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


DOCS_NAMED = re.compile(r"docs/([\w-]+\.md)(?: sections? (\d+(?:\.\d+)?))?")


def test_every_docs_page_and_section_the_code_names_exists():
    model = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", model, flags=re.MULTILINE))
    missing = []
    for path, text in texts():
        for page, section in DOCS_NAMED.findall(text):
            if not (ROOT / "docs" / page).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{page}")
            elif page == "model.md" and section and section not in sections:
                missing.append(f"{path.relative_to(ROOT)}: docs/model.md section {section}")
    assert not missing, "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("section", ["1", "2", "3", "3.1", "3.2", "4", "5", "6", "7", "8"])
def test_the_model_page_has_every_numbered_section(section):
    model = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    assert re.search(rf"^#{{2,3}} {re.escape(section)}[. ]", model, flags=re.MULTILINE), section


def test_the_wheel_ships_the_docs_the_cli_names():
    """pyproject puts docs/ in the wheel as sim/_docs (as scenarios/ as sim/_scenarios)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["docs"] == "sim/_docs"
    from sim.docs import docs_path
    assert docs_path("model.md").name == "model.md" and (ROOT / "docs" / "model.md").is_file()
