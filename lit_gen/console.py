"""What a user sees while lit_gen runs: Lightning's messages about things lit_gen already handles are silenced
(each with its reason), and the progress bar of a job budgeted in steps counts steps against ``max_steps``
with an ETA."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

# (message pattern, why lit_gen silences it)
SILENCED = [
    (r"Found \d+ module\(s\) in eval mode at the start of training",
     "the EMA copy (and DALL-E's frozen dVAE) stay in eval mode by design"),
    (r"LightningCLI's args parameter is intended to run from within Python",
     "cli_main hands LightningCLI its arguments on purpose (sys.argv is the caller's, e.g. pytest's)"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval",
     "Lightning logs every log_every_n_steps optimizer steps across epochs: short epochs lose no logs"),
    (r"You're resuming from a checkpoint that ended before the epoch ended",
     "the DataModule saves how far into the epoch a checkpoint is, and a resume skips those batches exactly"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "raised inside Lightning's own code by this torch release; nothing a user can change"),
    (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
     "lit-gen builds the same callbacks for every fit of a run"),
    (r"Checkpoint directory .* exists and is not empty",
     "a resume continues in its run's checkpoint folder; a fresh fit into one with checkpoints is refused"),
    (r"The dirpath has changed from",
     "a checkpoint tested or fine-tuned under another run name: that run keeps its own checkpoints"),
]
TIPS = ("litlogger",)  # Lightning's advertisement on every fit


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(tip in str(record.msg) for tip in TIPS)


def silence_handled_messages() -> None:
    """Install the filters of :data:`SILENCED` and :data:`TIPS` (idempotent)."""
    for pattern, _reason in SILENCED:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar; when the trainer has a step budget (``max_steps`` > 0) the training bar
    counts optimizer steps against it, with its ETA, across epochs (and from the resumed step), instead of
    restarting at every epoch."""

    def _budget(self, trainer) -> int | None:
        return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        budget = self._budget(trainer)
        if budget is not None:
            bar = self.train_progress_bar
            bar.reset(total=budget)
            bar.initial = bar.n = trainer.global_step  # the ETA counts only this run's steps
            bar.set_description("steps")
            bar.refresh()

    def on_train_epoch_start(self, trainer, *args) -> None:
        if self._budget(trainer) is None:
            super().on_train_epoch_start(trainer, *args)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_description(f"steps (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._budget(trainer) is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, convert_inf(bar.total)):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._budget(trainer) is None:
            return super().on_train_epoch_end(trainer, pl_module)
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


# --- one-line errors ----------------------------------------------------------------------------------------
COMMANDS = ("fit", "validate", "test", "sample", "reflow", "export", "import", "memory")


def check_command(argv: list[str]) -> None:
    """A first argument that is neither an option nor a command: one line listing every command."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise ValueError(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} (lit-gen --help)")


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` given: valid YAML holding a mapping, or one line naming the file, line and
    column."""
    import yaml

    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            continue  # the parser names a missing file
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"--config {name!r} is not valid YAML{where}: "
                             f"{getattr(err, 'problem', err)}") from None
        if not data:
            raise ValueError(f"--config {name!r} is empty: a config is a YAML mapping of sections "
                             "(trainer:, model:, data:, ...), e.g. experiments/ddpm/digits.yaml")
        if not isinstance(data, dict):
            raise ValueError(f"--config {name!r} holds a {type(data).__name__}, not a mapping of sections "
                             "(trainer:, model:, data:, ...)")
        if "DiffusersUNet" in class_paths(data):
            from lit_gen.nets.diffusers_unet import require_diffusers

            require_diffusers(f"--config {name!r} (its net lit_gen.nets.DiffusersUNet)")


def class_paths(data) -> set[str]:
    """The class names (last dotted part) of every ``class_path`` in a parsed config."""
    if isinstance(data, dict):
        found = {str(data["class_path"]).rsplit(".", 1)[-1]} if "class_path" in data else set()
        return found.union(*(class_paths(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(class_paths(v) for v in data))
    return set()


def one_line(message: str) -> str:
    """A parser or loader error as one readable line: the informative alternative of a union, without the
    types."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # re-raised from a DataLoader worker: the error is the last line
    if "Original Traceback" in message and lines:
        return lines[-1].partition(": ")[2] or lines[-1]
    text = " ".join(" ".join(lines).split())
    for i, line in enumerate(lines):
        if line.startswith("- Problem with given class_path"):
            detail = [line[2:]]
            for more in lines[i + 1 :]:
                if more.startswith("- ") or more.startswith("Given value"):
                    break
                detail.append(more)
            text = " ".join(" ".join(detail).split())
            break
    return _tidy(text)


def _tidy(text: str) -> str:
    """Drop jsonargparse's type names and echoed namespaces; join nested keys:
    ``key net.base_channels: ...``."""
    text = re.sub(r"Type \S.*? expects (?:a function or a callable class|an? [^:]*?): ", "", text)
    text = re.sub(r"\. Got value: Namespace\(.*\)\.?$", ".", text)
    while True:
        joined = re.sub(r'Parser key "([^"]+)": Parser key "([^"]+)":', r'Parser key "\1.\2":', text)
        if joined == text:
            return text.replace('Parser key "', 'key "')
        text = joined
