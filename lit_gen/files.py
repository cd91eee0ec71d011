"""Writing users' files safely (no Lightning imports here): every file lit_gen writes appears whole or not at
all, and a folder that cannot take a file is found before the work that would fill it.

:func:`atomic_write` writes to a temporary file in the destination's own folder, flushes it to disk (fsync)
and renames it over the destination, so a crash, a signal or a full disk mid-write leaves the previous file
intact. A temporary file elsewhere (``$TMPDIR``) would be moved across file systems by copying in place, which
is not atomic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """A file lit_gen had to write could not be written; the message names the file and the reason."""


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it to ``path``. Raise
    :class:`WriteError` (one line: the path and the reason) if any of it fails; ``path`` is then untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {str(path)!r}: {_reason(err)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """Raise :class:`WriteError` unless ``folder`` can take a new file: it is a folder that takes one, or it
    does not exist yet and its nearest existing parent is a folder that takes one (tried with an empty probe
    file, removed at once; nothing is created). ``what`` names the option, e.g. ``--output``."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        shown = folder if existing == folder else existing
        raise WriteError(f"{what} {str(folder)!r} cannot be written: {str(shown)!r} is a file, not a folder")
    probe = existing / f".lit_gen_write_probe.{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise WriteError(f"{what} {str(folder)!r} cannot be written: {_reason(err)}") from None
    return folder


def check_new_file(path: str | Path, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Raise :class:`WriteError` (or ValueError for a wrong suffix) unless ``path`` can be written: its folder
    takes files and it is not a folder. An existing file is replaced (atomically)."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise ValueError(f"{what} {str(path)!r}: expected a file ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise WriteError(f"{what} {str(path)!r} is a folder, not a file")
    check_writable_folder(path.parent, f"the folder of {what}")
    return path
