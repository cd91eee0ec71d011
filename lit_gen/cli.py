"""The ``lit-gen`` command: LightningCLI (fit / validate / test) plus ``lit-gen sample`` and
``lit-gen export``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Literal

from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

import lit_gen.data  # noqa: F401  (registers DataModules so short class names resolve)
import lit_gen.methods  # noqa: F401  (registers methods so short class names resolve)
from lit_gen.callbacks import Checkpoint, SampleGrid
from lit_gen.checkpoints import (
    TAG,
    CheckpointError,
    check_method,
    checkpoint_layout,
    export_weights,
    import_class,
    read_checkpoint,
)
from lit_gen.console import COMMANDS, silence_handled_messages
from lit_gen.data.base import GenerativeDataModule
from lit_gen.files import check_writable_folder
from lit_gen.methods.base import LitGenModule
from lit_gen.runs import RunConfig, RunLock, check_name, refuse_or_clear
from lit_gen.strategies import FSDP, DeepSpeed

silence_handled_messages()  # Lightning's messages about what lit_gen handles (each with its reason)

DESCRIPTION = """Generative-model methods behind one command.
  lit-gen fit --config experiments/<method>/<dataset>.yaml     train (resume with --ckpt_path last)
  lit-gen validate | test --config CONFIG --ckpt_path CKPT      losses, bits/dim, likelihoods
  lit-gen sample --ckpt_path CKPT [--help]                      draw samples (samples.npz, grid.png); the
                                                                checkpoint's method adds its sampling flags
  lit-gen reflow --ckpt_path CKPT --num_pairs N --output DIR    a teacher's (noise, sample) pairs for a
                                                                2-rectified flow (DIR/pairs.npz)
  lit-gen export --ckpt_path CKPT --output model.safetensors    the sampling weights with their config
  lit-gen export --ckpt_path DIR --output model.ckpt            a DeepSpeed / FSDP checkpoint folder as one
                                                                file
  lit-gen export --ckpt_path CKPT --format diffusers --output DIR   a diffusers pipeline folder
  lit-gen import diffusers SRC --output model.ckpt              a diffusers DDPM / DDIM / ScoreSdeVe pipeline
                                                                (folder or Hub id) as a lit_gen checkpoint
  lit-gen memory --config CONFIG [--config PRESET] --devices N  memory per device under DDP / ZeRO / FSDP"""


USAGE = f"lit-gen {{{','.join(COMMANDS)}}} [options]   (lit-gen COMMAND --help lists a command's options)"


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description's lines kept as written."""


class LitGenCLI(LightningCLI):
    """LightningCLI whose runs live in a fixed directory ``<runs_dir>/<name>/`` (TensorBoard logs,
    config.yaml, checkpoints/, samples/), so ``--ckpt_path last`` finds the newest checkpoint of the same
    run."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LitGenModule,
            GenerativeDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "description": DESCRIPTION,
                           "formatter_class": HelpFormatter,
                           "usage": USAGE},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # no predict: a method's output is drawn by `lit-gen sample`, which takes the sampling options
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--name", type=str, default="default", help="Run name: the run lives in "
                                                                        "<runs_dir>/<name>/.")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Folder that holds the runs.")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: delete the run's checkpoints, sample grids and logs and start afresh "
                                 "(without it, a fit into a run that holds checkpoints must resume with "
                                 "--ckpt_path last).")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 1000,
                # keep last.ckpt plus the newest 5 step checkpoints ("best" by step); -1 keeps every one
                "checkpoint.monitor": "step",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 5,
                "checkpoint.filename": "step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
                # last.ckpt is always this run's newest state: never a last-v1.ckpt beside a stale last.ckpt
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(SampleGrid, "samples")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_dir(self) -> Path:
        cfg = self._config()
        return Path(cfg.runs_dir) / cfg.name

    def before_instantiate_classes(self) -> None:
        cfg = self._config()
        check_name(cfg.name)
        if cfg.trainer.logger in (None, True):
            cfg.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.TensorBoardLogger",
                init_args=Namespace(save_dir=cfg.runs_dir, name=cfg.name, version="",
                                    default_hp_metric=False),
            )
        callbacks = cfg.trainer.callbacks or []
        if cfg.trainer.enable_progress_bar is not False and not any(
                "ProgressBar" in str(getattr(c, "class_path", c)) for c in callbacks):
            cfg.trainer.callbacks = [*callbacks, Namespace(class_path="lit_gen.console.StepProgressBar",
                                                           init_args=Namespace())]
        if cfg.trainer.default_root_dir is None:
            cfg.trainer.default_root_dir = str(self.run_dir())
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = str(self.run_dir() / "checkpoints")

    def before_fit(self) -> None:
        """Check the checkpoint against this run and the run folder (rank 0: a fresh fit into a run with
        checkpoints is refused; the folder is locked and must take files), then say what one optimizer step
        sees: micro-batch x accumulation x ranks (rank 0 only)."""
        self._check_resume()
        if self.config_init["fit"]["ckpt_path"] is not None:  # a resume continues its own weights
            self.model.init_from = None
        if rank_zero_only.rank == 0:
            run_dir, checkpoint_dir = self.run_dir(), Path(self._config().checkpoint.dirpath)
            if self.config_init["fit"]["ckpt_path"] is None:
                refuse_or_clear(run_dir, checkpoint_dir, self._config().overwrite)
            self._created = not run_dir.exists()
            self._lock = RunLock(run_dir)
            check_writable_folder(checkpoint_dir, "the checkpoint folder")
        trainer, batch = self.trainer, getattr(self.datamodule, "batch_size", None)
        world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        if batch is not None and rank_zero_only.rank == 0 and batch % world == 0:
            print(f"lit-gen: global batch {batch * accumulate} per optimizer step = micro-batch "
                  f"{batch // world} x {accumulate} accumulation step(s) x {world} rank(s)", file=sys.stderr)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a fit that fails before its first step leaves no run folder it created behind."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if getattr(self, "_created", False) and self.trainer.global_step == 0:
                self._lock.release()
                shutil.rmtree(self.run_dir(), ignore_errors=True)
            raise
        finally:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()

    def before_validate(self) -> None:
        self._check_resume()

    def before_test(self) -> None:
        self._check_resume()

    def _check_resume(self) -> None:
        """A sharded checkpoint folder needs the strategy and world size that wrote it (one-line error
        otherwise, naming the way through ``lit-gen export``); a consolidated file (from export) restarts
        training from its weights, EMA included, with fresh optimizer state."""
        ckpt, subcommand = getattr(self, "_ckpt", None), self.subcommand
        if ckpt is None:
            return
        path = self.config_init[subcommand]["ckpt_path"]
        info, layout = ckpt[TAG], checkpoint_layout(path)
        if "consolidated_from" in info:
            if subcommand == "fit":
                if rank_zero_only.rank == 0:
                    print(f"lit-gen: {path} holds consolidated weights (from {info['consolidated_from']}): "
                          "training starts from them, EMA included; the optimizer state, LR schedule and "
                          "step count start afresh", file=sys.stderr)
                self.model.init_weights = path
                self.config_init[subcommand]["ckpt_path"] = None
            return
        if layout == "file":
            self._check_batch_size(ckpt, subcommand)
            return
        strategy, world = self.trainer.strategy, self.trainer.world_size
        fix = (f"make one file with lit-gen export --ckpt_path {path} --output model.ckpt and pass "
               "--ckpt_path model.ckpt (the optimizer state is then reset)")
        wanted = DeepSpeed if layout == "deepspeed" else FSDP
        if not isinstance(strategy, wanted):
            raise CheckpointError(f"{path} is a {layout} checkpoint folder, but this run's strategy is "
                                  f"{type(strategy).__name__}: use the same strategy preset, or {fix}")
        if info.get("world_size") not in (None, world):
            raise CheckpointError(f"{path} was written by {info['world_size']} ranks, but this run has "
                                  f"{world}: a sharded checkpoint resumes on the same world size; to change "
                                  f"it, {fix}")
        self._check_batch_size(ckpt, subcommand)

    def _check_batch_size(self, ckpt: dict, subcommand: str) -> None:
        """A resume continues the same epoch only at the same batch size: checked before anything is
        written."""
        if subcommand == "fit" and self.datamodule is not None:
            self.datamodule.check_resumable(ckpt.get(type(self.datamodule).__qualname__) or {})

    def _parse_ckpt_path(self) -> None:
        """Fail in one line, before anything is written, on a missing, corrupt or foreign checkpoint; resolve
        ``last`` to this run's ``checkpoints/last.ckpt`` (a file, or a folder under DeepSpeed and FSDP). The
        checkpoint's hyperparameters then replace the config's model arguments, as in Lightning."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path in (None, "best", "hpc", "registry"):
            return
        if ckpt_path == "last":
            last = Path(cfg.checkpoint.dirpath or Path(cfg.runs_dir) / cfg.name / "checkpoints") / "last.ckpt"
            if not last.exists():
                if subcommand != "fit":  # scoring a random model is never what was asked
                    raise CheckpointError(f"--ckpt_path last: no {last} (fit the run first, or give a "
                                          f"checkpoint path)")
                print(f"lit-gen: no {last} yet, starting from scratch", file=sys.stderr)
                cfg.ckpt_path = None
                return
            ckpt_path = cfg.ckpt_path = str(last)
        # read as plain data (weights_only): a checkpoint that would run code is refused here, in one line
        method = import_class(cfg.model.class_path)
        self._ckpt = ckpt = read_checkpoint(ckpt_path)
        check_method(ckpt, method, ckpt_path)
        init_args = cfg.model.get("init_args") or {}
        given = {k: init_args[k] for k in method.evaluation_args if init_args.get(k) is not None}
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if hparams:  # as LightningCLI does for a file, for folders too
            if "_class_path" in hparams:
                hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        for key, value in given.items():  # ... except the evaluation options given for this run
            self.config[subcommand].model.init_args[key] = value


def export_main(argv: list[str]) -> None:
    """``lit-gen export``: a checkpoint's sampling weights to a safetensors file, its config in the
    metadata."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lit-gen export", exit_on_error=False, description=(
        "Write the sampling weights (EMA when the run kept one) of a checkpoint to a .safetensors file, with "
        "the method's config in its metadata (sample from it with lit-gen sample --weights FILE); or "
        "consolidate a DeepSpeed / FSDP checkpoint folder into one .ckpt file "
        "(every weight, EMA included, no optimizer state) that lit-gen sample, test and fit load under any "
        "strategy."))
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by lit-gen fit "
                                                                     "(file or folder).")
    parser.add_argument("--output", type=str, required=True, help="The .safetensors or .ckpt file to write "
                                                                  "(a folder with --format diffusers).")
    parser.add_argument("--format", type=Literal["lit_gen", "diffusers"], default="lit_gen", help=(
        "lit_gen: a .safetensors or .ckpt file; diffusers: a pipeline folder (DDPMPipeline, DDIMPipeline or "
        "ScoreSdeVePipeline) that from_pretrained loads, for a model whose net is DiffusersUNet."))
    cfg = parser.parse_args(argv)
    if cfg.format == "diffusers":
        from lit_gen.interop.pipelines import export_diffusers

        folder, pipeline = export_diffusers(cfg.ckpt_path, cfg.output)
        print(f"wrote {pipeline} of {cfg.ckpt_path} to {folder} (load it with "
              f"{pipeline}.from_pretrained({str(folder)!r}))", file=sys.stderr)
        return
    path = export_weights(cfg.ckpt_path, cfg.output)
    what = "the sampling weights" if path.suffix == ".safetensors" else "every weight"
    print(f"wrote {what} of {cfg.ckpt_path} to {path}", file=sys.stderr)
