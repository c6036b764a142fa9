"""Where the documentation is: docs/ in a checkout, sim/_docs/ in an installed wheel (the same files).

    >>> docs_path("model.md").name
    'model.md'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["docs_path", "docs_hint"]


def _docs_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "docs", here / "_docs"):  # checkout, then wheel
        if (candidate / "model.md").is_file():
            return candidate
    return here.parent / "docs"


def docs_path(page: str = "README.md") -> Path:
    """A documentation page, as a path relative to the working folder when it is below it (docs/model.md)."""
    path = _docs_dir() / page
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def docs_hint(page: str, section: str | None = None) -> str:
    """`docs/model.md section 2`: where a message sends its reader."""
    return f"{docs_path(page)}" + (f" section {section}" if section else "")
