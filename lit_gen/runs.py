"""A run's folder (``<runs_dir>/<name>/``) is one run's data: a fit never mixes its checkpoints with
another's, two fits never write into one folder at once, and a command that is refused or only evaluates
leaves it as it was."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback

from lit_gen.files import WriteError

LOCK = ".lit_gen.lock"


def check_name(name: str) -> str:
    """A run name is a folder inside the runs folder: refuse absolute paths and ``..`` (one-line
    ValueError)."""
    parts = re.split(r"[/\\]", name)
    if not name.strip() or os.path.isabs(name) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"--name {name!r}: a run name is a folder inside --runs_dir "
                         "(letters, digits, '-', '_', and '/' for subfolders; no '..', no absolute path): "
                         "use --runs_dir to put runs elsewhere")
    return name


def checkpoints_in(folder: Path) -> list[str]:
    """The names of the checkpoints (files or sharded folders) in a run's checkpoint folder."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".ckpt")


def refuse_or_clear(run_dir: Path, checkpoint_dir: Path, overwrite: bool) -> None:
    """A fresh fit (no ``--ckpt_path``) into a run that holds checkpoints is refused, naming the ways out;
    with ``overwrite`` the run's checkpoints, sample grids and TensorBoard logs are deleted first."""
    found = checkpoints_in(checkpoint_dir)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ValueError(f"the run {str(run_dir)!r} already holds checkpoints ({shown}): resume it with "
                         "--ckpt_path last, start a new run with --name NEW_NAME, or delete them with "
                         "--overwrite true")
    for name in found:  # only the checkpoints: --checkpoint.dirpath may name a folder that holds other files
        path = checkpoint_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for stale in ("samples", "density"):
        shutil.rmtree(run_dir / stale, ignore_errors=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()


class RunLock:
    """An exclusive lock on a run folder for the life of a fit (``fcntl.flock`` on ``<run>/.lit_gen.lock``): a
    second fit of the same run is refused in one line. The OS releases it when the process ends, however it
    ends."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        self._file = open(path, "a+")  # noqa: SIM115 - held open for the fit's life
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise WriteError(f"the run {str(run_dir)!r} is in use by another lit-gen fit ({holder}): wait "
                             "for it to end, or use another --name") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        self._file.close()


class RunConfig(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` of a fit once the fit has been validated and set up; ``validate``
    and ``test`` never touch a fit's ``config.yaml``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)
