"""Command-line overrides that shrink any shipped config to a seconds-long CPU run."""

from __future__ import annotations

import lightning.pytorch as L
import yaml

from tests.conftest import EXPERIMENTS

TINY_NET = {
    "lit_gen.nets.UNet": {
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
        "dropout": 0.0,
    },
    "lit_gen.nets.EncoderUNet": {
        "base_channels": 8,
        "channel_mults": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [4],
    },
    "lit_gen.nets.MLPDenoiser": {"hidden_dim": 16, "num_layers": 2},
    "lit_gen.flows.MLPFlow": {"num_layers": 2, "hidden_features": 8},
    "lit_gen.flows.PlanarFlow": {"num_layers": 2},
    "lit_gen.flows.RadialFlow": {"num_layers": 2},
    "lit_gen.flows.NICE": {"num_coupling_layers": 2, "hidden_features": 8, "num_hidden_layers": 1},
    "lit_gen.flows.RealNVP": {"num_steps_per_scale": 1, "hidden_channels": 4, "num_blocks": 1},
    "lit_gen.flows.Glow": {"num_levels": 2, "num_steps": 1, "hidden_channels": 4},
}
TINY_IMAGE_SIZE = {"DigitsDataModule": 8, "ImageFolderDataModule": 8, "CaptionedImageFolderDataModule": 8}
# score methods: a 10-step SDE (NCSN keeps its 10 levels) and 2 Langevin steps per level
SCORE_METHODS = {
    "ScoreSDE": ["--model.init_args.num_scales=10", "--model.init_args.ode_rtol=1e-2",
                 "--model.init_args.ode_atol=1e-2"],
    "NCSN": ["--model.init_args.n_steps_each=2"],
}


# methods without a ``net`` / ``flow`` sub-config: their own size arguments
TINY_METHOD = {
    "DiscreteVAE": {"num_codes": 16, "channels": 8, "code_dim": 8, "tau_steps": 2, "kl_steps": 2},
    "CLIP": {"dim": 16, "depth": 1, "heads": 2, "channels": 8, "embed_dim": 8},
    "DALLE": {"dim": 16, "depth": 2, "heads": 2},
}


def tiny_dvae_checkpoint(data_shape: tuple[int, ...] = (3, 32, 32)) -> str:
    """A tiny DiscreteVAE checkpoint (seeded weights, no training) that DALLE configs can load: written once
    per shape under the temp folder, atomically, so concurrent ranks or tests find the same file."""
    import os
    import tempfile
    from pathlib import Path

    import lightning
    import torch

    from lit_gen import __version__
    from lit_gen.checkpoints import TAG, class_path
    from lit_gen.methods.dvae import DiscreteVAE

    hparams = {"data_shape": tuple(data_shape), **TINY_METHOD["DiscreteVAE"], "ema_decay": 0.0}
    path = Path(tempfile.gettempdir()) / f"lit_gen_tiny_dvae_{'x'.join(map(str, data_shape))}_v3.ckpt"
    if not path.exists():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = DiscreteVAE(**hparams)
            model.configure_model()
            ckpt = {"state_dict": model.state_dict(),
                    "hyper_parameters": {k: v for k, v in model.hparams.items() if k not in ("optimizer",
                                                                                             "lr_scheduler")},
                    "pytorch-lightning_version": lightning.__version__,
                    TAG: {"class_path": class_path(model), "version": __version__, "world_size": 1}}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    return str(path)


def dvae_for(config: str, tiny: bool = True) -> str:
    """A tiny dVAE checkpoint for the images of a DALLE ``config`` (at its tiny size, or at its configured
    size)."""
    data = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]
    size = data.get("init_args", {}).get("image_size", 32)
    if tiny:
        size = TINY_IMAGE_SIZE.get(data["class_path"], size)
    return tiny_dvae_checkpoint((3, size, size))


def method_configs() -> list[str]:
    return sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.glob("*/*.yaml")
                  if p.parent.name != "trainer")


def tiny_args(config: str, runs_dir, name: str = "tiny", max_steps: int = 2) -> list[str]:
    """``--config config`` plus overrides: a tiny net or flow, few diffusion steps, tiny batches, fast
    callbacks."""
    cfg = yaml.safe_load((EXPERIMENTS / config).read_text())
    model = cfg["model"]["init_args"]
    key = "flow" if "flow" in model else "net"  # flows build model.flow, diffusion models model.net
    args = ["--config", str(EXPERIMENTS / config), "--config", str(EXPERIMENTS / "trainer" / "cpu.yaml")]
    method = cfg["model"]["class_path"]
    if method in TINY_METHOD:
        args += [f"--model.init_args.{arg}={value}" for arg, value in TINY_METHOD[method].items()]
        if method == "DALLE":
            args.append(f"--model.init_args.dvae_ckpt={dvae_for(config)}")
    else:
        for arg, value in TINY_NET[model[key]["class_path"]].items():
            args.append(f"--model.init_args.{key}.init_args.{arg}={value}")
    if "sampling_steps" in model:
        args.append("--model.init_args.sampling_steps=5")
    if method in TINY_METHOD:
        pass  # their sizes above
    elif key == "flow":
        args.append("--model.init_args.init_batch_size=8")
    elif method in SCORE_METHODS:
        args += SCORE_METHODS[method]
    else:
        args.append("--model.init_args.num_timesteps=10")
    data_class = cfg["data"]["class_path"]
    if data_class in TINY_IMAGE_SIZE:
        args.append(f"--data.init_args.image_size={TINY_IMAGE_SIZE[data_class]}")
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
    from lit_gen.cli import cli_main

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
        from lit_gen.strategies import full_state_dict

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
