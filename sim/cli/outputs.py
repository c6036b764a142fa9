"""Output folders that are checked before a run, and writes that never lose a finished one.

    target = output_folder(out_dir, Path("out") / s.name)        # exit 2 now, not after the run
    paths = write_safely(lambda folder: write_outputs(outcome, folder), target, s.name)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import typer

from sim.cli.console import err, fail, say

__all__ = ["output_folder", "write_safely", "out_option"]


def out_option(default: str) -> typer.models.OptionInfo:
    """The --out option (a string: `--out ""` must be told from `--out .`, which a Path is not)."""
    return typer.Option("--out", metavar="FOLDER", help=f"Output folder, created if missing (default: {default}).")


def output_folder(given: str | None, default: Path, option: str = "--out") -> Path:
    """`given` (or `default`), created and shown to be writable before any run starts; exit status 2
    naming `option` when it is empty, a file, or cannot be created or written."""
    if given is not None and str(given).strip() == "":
        raise fail(f"{option}: empty; name a folder (default: {default})")
    folder = Path(given) if given is not None else default
    try:
        exists, is_dir, is_file = folder.exists(), folder.is_dir(), folder.is_file()
    except OSError as exc:  # a name too long, a loop of links
        raise fail(f"{option}: not a usable path ({exc.strerror or exc})") from None
    if exists and not is_dir:
        raise fail(f"{option} {folder}: is {'a file' if is_file else 'not a folder'}; name a folder (created if "
                   "missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{option} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".loginstorm-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise fail(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def write_safely(write: Callable[[Path], list[Path]], folder: Path, name: str) -> list[Path]:
    """`write(folder)`; when the folder has become unwritable since it was checked (full disk,
    removed, permissions), the same outputs in a new folder under the system's temporary folder,
    said on stderr: a finished run is never lost."""
    try:
        return write(folder)
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix=f"loginstorm-{name}-"))
        say(err, f"could not write to {folder} ({exc.strerror or exc}); the outputs go to {fallback} instead")
        return write(fallback)
