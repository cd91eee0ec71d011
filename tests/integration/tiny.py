"""Command-line overrides that shrink any shipped config to a seconds-long CPU run. Nothing here names a
method, network or data set: each class brings its own tiny settings (``tiny_args``) and offline files
(``fake_data``)."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path

import lightning.pytorch as L
import yaml

from lit_gen.methods.base import TinyCheckpoint
from tests.conftest import EXPERIMENTS, ROOT


def resolve(class_path: str, package: str) -> type:
    """A config's class: a dotted path, or a bare name that ``package`` exports (as the CLI resolves them)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module or package), name)


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def fake_root(cls: type) -> Path:
    """Where the offline files of a DataModule class live: written once per machine and version of
    ``lit_gen/data/fakes.py`` (into a temporary folder, then renamed: concurrent ranks and tests agree)."""
    import shutil

    from lit_gen.data import fakes

    version = hashlib.sha256(Path(fakes.__file__).read_bytes()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"lit_gen_fake_{version}" / cls.__name__
    if not root.exists():
        tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cls.fake_data(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process was first: its files are the same
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def data_args(config: str, monkeypatch=None, tiny: bool = True) -> tuple[list[str], tuple]:
    """The data's overrides (its tiny settings, with ``tiny``, and its offline files: :func:`fake_root`) and
    the shape of its items. Fake files that need patched md5 sums need ``monkeypatch``."""
    data = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]
    cls = resolve(data["class_path"], "lit_gen.data")
    fake = cls.fake_data(fake_root(cls))
    if fake.patches and monkeypatch is None:
        raise ValueError(f"{config}: {cls.__name__}'s fake files are read with patches: pass monkeypatch")
    for owner, name, value in fake.patches:
        monkeypatch.setattr(owner, name, value)
    overrides = {**(cls.tiny_args if tiny else {}), **fake.init_args}
    shape = tuple(cls(**{**data.get("init_args", {}), **overrides}).data_shape)
    return [f"--data.init_args.{k}={_value(v)}" for k, v in overrides.items()], shape


def method_args(config: str, data_shape: tuple[int, ...], tiny: bool = True) -> list[str]:
    """The method's tiny settings and those of each network in its config (``net``, ``flow``, ...), or with
    ``tiny=False`` only the checkpoints that it loads (made at ``data_shape``)."""
    model = yaml.safe_load((EXPERIMENTS / config).read_text())["model"]
    init = model.get("init_args", {})
    overrides = resolve(model["class_path"], "lit_gen.methods").tiny_args(init, data_shape)
    args = [f"--model.init_args.{k}={tiny_checkpoint(v) if isinstance(v, TinyCheckpoint) else _value(v)}"
            for k, v in overrides.items() if tiny or isinstance(v, TinyCheckpoint)]
    for key, sub in init.items() if tiny else ():
        if isinstance(sub, dict) and "class_path" in sub:
            net = getattr(resolve(sub["class_path"], "lit_gen.nets"), "tiny_args", {})
            args += [f"--model.init_args.{key}.init_args.{k}={_value(v)}" for k, v in net.items()]
    return args


def required_args(config: str, monkeypatch) -> list[str]:
    """What ``config`` needs to instantiate here at its own size: its data's offline files and the checkpoints
    its method loads."""
    data, shape = data_args(config, monkeypatch, tiny=False)
    return data + method_args(config, shape, tiny=False)


@functools.cache
def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "lit_gen").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tiny_checkpoint(spec: TinyCheckpoint) -> str:
    """An untrained checkpoint of the tiny ``spec.method`` (seed 0) that other methods can load: written once,
    atomically, under the temp folder, named by a hash of its arguments and of lit_gen's code."""
    import lightning
    import torch

    from lit_gen import __version__
    from lit_gen.checkpoints import TAG, class_path, expected_class

    cls, shape = expected_class(spec.method), spec.init_args.get("data_shape")
    hparams = {**cls.tiny_args(spec.init_args, shape), **spec.init_args, "ema_decay": 0.0}
    key = hashlib.sha256(json.dumps([class_path(cls), hparams, _code_digest()], default=str).encode())
    path = Path(tempfile.gettempdir()) / f"lit_gen_tiny_{cls.__name__}_{key.hexdigest()[:16]}.ckpt"
    if not path.exists():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = cls(**hparams)
            model.configure_model()
        kept = {k: v for k, v in model.hparams.items() if k not in ("optimizer", "lr_scheduler")}
        ckpt = {"state_dict": model.state_dict(), "hyper_parameters": kept,
                "pytorch-lightning_version": lightning.__version__,
                TAG: {"class_path": class_path(model), "version": __version__, "world_size": 1}}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    return str(path)


def reads_files(config: str) -> bool:
    """Whether the data of ``config`` lives in files (it has offline stand-ins), not in lit_gen itself."""
    from lit_gen.data import GenerativeDataModule

    cls = resolve(yaml.safe_load((EXPERIMENTS / config).read_text())["data"]["class_path"], "lit_gen.data")
    return cls.fake_data.__func__ is not GenerativeDataModule.fake_data.__func__


def method_configs() -> list[str]:
    return sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.glob("*/*.yaml")
                  if p.parent.name != "trainer")


def tiny_args(config: str, runs_dir, name: str = "tiny", max_steps: int = 2, monkeypatch=None) -> list[str]:
    """``--config config`` plus overrides: a tiny method, network and data set (offline files where its data
    lives in files), tiny batches, fast callbacks; the run in ``runs_dir/name``."""
    data, shape = data_args(config, monkeypatch)
    args = ["--config", str(EXPERIMENTS / config), "--config", str(EXPERIMENTS / "trainer" / "cpu.yaml"),
            *method_args(config, shape), *data]
    args += [
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0",
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=null",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--samples.every_n_steps=2",
        "--samples.num_samples=4",
        "--samples.trajectory_points=3",
        "--checkpoint.every_n_train_steps=1",
        "--checkpoint.every_n_epochs=null",
        f"--runs_dir={runs_dir}",
        f"--name={name}",
    ]
    return args


def fit_tiny(config: str, runs_dir, name: str, *extra: str) -> str:
    """Fit the tiny version of ``config`` without sample grids; returns the path of its last.ckpt."""
    from lit_gen.main import cli_main

    cli_main(["fit", *tiny_args(config, runs_dir, name), "--samples.every_n_steps=0", *extra])
    return str(runs_dir / name / "checkpoints" / "last.ckpt")


class StopAfterEpochs(L.Callback):
    """Stops fitting after ``epochs`` epochs, as an interrupted run would, without changing its config."""

    def __init__(self, epochs: int = 1) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class AssertSameWeightsAcrossRanks(L.Callback):
    """Under DDP, fails the run unless every rank ends with the same parameters and buffers (DDP only
    averages gradients: state set outside backward, like ActNorm's data-dependent init, must be synced)."""

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        flat = torch.cat([t.detach().double().flatten() for t in pl_module.state_dict().values()
                          if t.is_floating_point()])
        gathered = pl_module.all_gather(flat)  # (world_size, N)
        if not torch.equal(gathered.min(0).values, gathered.max(0).values):
            raise RuntimeError("the ranks' weights differ after training")


class StopAtStep(L.Callback):
    """Sets ``should_stop`` at global step ``step``, mid-epoch, as EarlyStopping or any other callback may."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class ExpectStartStep(L.Callback):
    """Fails the run unless training starts at global step ``step`` (a resume continues where it stopped)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step != self.step:
            raise RuntimeError(f"training started at global step {trainer.global_step}, expected {self.step}")


class SlowSteps(L.Callback):
    """Sleeps ``seconds`` after each step and, from global step ``ready_step`` on, touches ``ready_file``:
    a test can then signal a run that is surely inside its training loop."""

    def __init__(self, seconds: float = 0.2, ready_file: str = "", ready_step: int = 3) -> None:
        self.seconds, self.ready_file, self.ready_step = seconds, ready_file, ready_step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        import time
        from pathlib import Path

        time.sleep(self.seconds)
        if self.ready_file and trainer.global_step >= self.ready_step:
            Path(self.ready_file).touch()


class StopAfterSteps(L.Callback):
    """Stops fitting after ``steps`` optimizer steps (mid-epoch, as a preempted job), without changing its
    config."""

    def __init__(self, steps: int = 1) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


class RecordBatches(L.Callback):
    """Appends (global step, a fingerprint of the batch) to ``path``, one line per training batch."""

    def __init__(self, path: str = "batches.txt") -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch_idx} {batch['x'].double().sum().item():.6f}\n")


class RecordLosses(L.Callback):
    """Rank 0 appends the training loss of every batch (its own micro-batch) to ``path``, one per line."""

    def __init__(self, path: str = "losses.txt") -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(f"{float(outputs['loss']):.10g}\n")


class CheckEMA(L.Callback):
    """Fails the run unless the EMA network equals, at the end, the EMA computed here in float64 from the
    gathered (full) weights after every optimizer step: d_n = min(decay, (1 + n) / (10 + n))."""

    def __init__(self, atol: float = 1e-6) -> None:
        self.atol = atol
        self.average: dict | None = None
        self.updates = 0

    def _weights(self, net) -> dict:
        from lit_gen.sharding import full_state_dict

        names = {n for n, _ in net.named_parameters()}
        return {k: v.double().clone() for k, v in full_state_dict(net).items() if k in names}

    def on_train_start(self, trainer, pl_module) -> None:
        self.average, self.updates = self._weights(pl_module.net), int(pl_module.ema.num_updates)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.ema.num_updates) == self.updates:  # no optimizer step (accumulating)
            return
        d = min(pl_module.ema.decay, (1 + self.updates) / (10 + self.updates))
        for k, w in self._weights(pl_module.net).items():
            self.average[k] = d * self.average[k] + (1 - d) * w
        self.updates += 1

    def on_train_end(self, trainer, pl_module) -> None:
        ema = self._weights(pl_module.ema.module)
        error = max(float((ema[k] - self.average[k]).abs().max()) for k in ema)
        if self.updates != int(pl_module.ema.num_updates) or not error <= self.atol:
            raise RuntimeError(f"EMA differs from the EMA of the gathered weights by {error} "
                               f"({self.updates} vs {int(pl_module.ema.num_updates)} updates)")
        if trainer.is_global_zero:
            # the weights are half precision, averaged in fp32 beside
            half = pl_module.ema._master is not None
            print(f"CheckEMA: {self.updates} updates, largest difference {error:.3g}, fp32 average beside "
                  f"half precision: {half}", flush=True)


class ReportRanks(L.Callback):
    """Prints this process's global, local and node rank and the world size when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        print(f"ReportRanks global {trainer.global_rank} local {trainer.local_rank} node {trainer.node_rank} "
              f"world {trainer.world_size}", flush=True)
