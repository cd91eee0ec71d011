"""Reading and loading lit_gen checkpoints with one-line errors (missing, corrupt, or of another method); one
method loads another's checkpoint (a classifier for guidance) through :func:`load_module`.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain data only, so a checkpoint from
a colleague or a hub cannot run code when it is opened; one that would is refused in one line. lit_gen writes
its hyperparameters as plain data (the parsed config), so its own checkpoints always pass.
:func:`export_weights` / :func:`load_weights` write and read the sampling weights as safetensors, with the
method's hyperparameters in the file's metadata.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lit_gen.allowlist import check_class_path, check_file_data
from lit_gen.files import atomic_write, check_new_file

TAG = "lit_gen"  # checkpoint key holding {"class_path": ..., "version": ...}


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message names the path and the reason."""


def class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by lit_gen, or raise :class:`CheckpointError` saying why it cannot be used.
    For a sharded checkpoint folder (DeepSpeed, FSDP) this is its metadata: everything but the weights and
    optimizer state (see :func:`consolidate` for the weights)."""
    path = Path(path)
    layout = checkpoint_layout(path)
    file = path if layout == "file" else path / "meta.pt" if layout == "fsdp" else _deepspeed_states(path)[0]
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(unsafe_message(path, err)) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint "
                              f"({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or (layout == "file" and "state_dict" not in ckpt):
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    if TAG not in ckpt or not isinstance(ckpt[TAG], dict):
        raise CheckpointError(f"{str(path)!r} was not written by lit_gen (no {TAG!r} entry)")
    # the classes it names are checked before anything imports them (the method, nets, optimizers, ...)
    check_class_path(ckpt[TAG].get("class_path"), repr(str(path)), f"{TAG}.class_path")
    check_file_data({k: ckpt[k] for k in HPARAM_KEYS if k in ckpt}, repr(str(path)))
    return ckpt


# what Lightning instantiates from a checkpoint
HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


# --- sharded checkpoints (DeepSpeed, FSDP) -----------------------------------------------------------------
def checkpoint_layout(path: str | Path) -> str:
    """``file`` (one .ckpt file), ``deepspeed`` or ``fsdp`` (a folder of shards); raise a one-line
    :class:`CheckpointError` for a missing path, or a folder inside a sharded checkpoint."""
    path = Path(path)
    if path.is_file():
        return "file"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if (path / "latest").is_file() and any(path.glob("*/*model_states.pt")):
        return "deepspeed"
    if (path / "meta.pt").is_file() and any(path.glob("*.distcp")):
        return "fsdp"
    if any(path.glob("*model_states.pt")) and (path.parent / "latest").is_file():
        raise CheckpointError(f"{str(path)!r} is the inner folder of the DeepSpeed checkpoint "
                              f"{str(path.parent)!r}: pass --ckpt_path {path.parent}")
    raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint "
                          "(a .ckpt file, or a DeepSpeed or FSDP checkpoint folder)")


def _deepspeed_states(path: Path) -> tuple[Path, str]:
    """The rank-0 model-states file of a DeepSpeed checkpoint folder, and its tag (the subfolder)."""
    tag = (path / "latest").read_text().strip()
    files = sorted((path / tag).glob("*model_states.pt"))
    if not files:
        raise CheckpointError(f"{str(path)!r}: the DeepSpeed checkpoint names tag {tag!r}, which has no "
                              f"model states")
    return files[0], tag


def consolidate(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint folder as one Lightning checkpoint: full fp32 weights (the EMA's included) and the
    run's metadata, without optimizer state. Needs no process group; DeepSpeed's reader is used for its
    folders."""
    path = Path(path)
    layout = checkpoint_layout(path)
    meta = read_checkpoint(path)
    if layout == "file":
        return meta
    if layout == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        states, tag = _deepspeed_states(path)
        state = dict(meta["module"])  # ZeRO-1/2: every weight and buffer; ZeRO-3: empty placeholders
        # DeepSpeed prints its progress and unpickles its files in full unless made to read plain data
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with quiet[0], quiet[1], plain_data_loads(path):
            # the optimizer's fp32 weights
            state.update(get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag))
        meta = {k: v for k, v in meta.items() if k not in DEEPSPEED_KEYS}
    else:
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            state = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)["state_dict"]
    empty = [k for k, v in state.items() if v.numel() == 0]  # a ZeRO-3 placeholder that no shard filled
    if empty:
        raise CheckpointError(f"{str(path)!r}: no weights found for {empty[:3]}")
    meta = {k: v for k, v in meta.items() if k not in ("optimizer_states", "lr_schedulers")}
    meta["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    meta[TAG] = {**meta[TAG], "consolidated_from": str(path)}
    return meta


# the only classes DeepSpeed's own checkpoint files hold beside plain data (ZeRO-1/2/3 optimizer states)
DEEPSPEED_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.utils.tensor_fragment.fragment_address")


@contextlib.contextmanager
def plain_data_loads(path: str | Path):
    """Within the block, every ``torch.load`` reads plain data only (``weights_only=True``), whatever its
    caller asks: DeepSpeed's readers ask for a full unpickling. Its own few plain classes are allowed; a file
    holding anything else is refused with :func:`unsafe_message`."""
    load = torch.load

    def plain_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return load(*args, **kwargs)
        except pickle.UnpicklingError as err:
            raise CheckpointError(unsafe_message(path, err)) from None

    # DeepSpeed's own modules (installed with it)
    allowed = [import_class(name) for name in DEEPSPEED_GLOBALS]
    torch.load = plain_load
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        torch.load = load


# keys of a DeepSpeed model-states file that are DeepSpeed's, not Lightning's (the client state is the rest)
DEEPSPEED_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
    "shared_params", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps",
    "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
    "ds_checkpoint_version",
    "checkpoint_parallel_dimensions",
})


def unsafe_message(path: str | Path, err: Exception) -> str:
    """One line for a checkpoint that only a full unpickling could read (which may run arbitrary code)."""
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", str(err))
    what = f"a pickled {found.group(1)}" if found else "pickled objects that are not tensors or plain data"
    return (f"refused to open {str(path)!r}: it holds {what}, and unpickling it could run arbitrary code "
            "(lit_gen loads checkpoints with torch.load(weights_only=True); lit_gen's own checkpoints hold "
            "plain data)")


def import_class(path: str) -> type:
    """The class at a dotted ``module.Class`` path."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def method_class(path: str, source: str = "the checkpoint") -> type:
    """The lit_gen method (LightningModule class) at ``path``: a dotted path, or a short name (``DDPM``). Only
    lit_gen's methods: anything else is refused before it is imported."""
    from lit_gen.allowlist import allowed_classes
    from lit_gen.methods.base import LitGenModule

    cls = allowed_classes().get(path) if isinstance(path, str) else None
    if cls is None or not issubclass(cls, LitGenModule):
        raise CheckpointError(f"{source} names the method {path!r}, which is not a method of this version of "
                              "lit_gen (nothing was imported)")
    return cls


def checkpoint_class(ckpt: dict[str, Any]) -> type:
    """The LightningModule class that wrote ``ckpt``."""
    return method_class(ckpt[TAG]["class_path"])


def expected_class(expected: type | str) -> type:
    """A method class, or the class a method name (``NoisyClassifier``) or dotted path names: one method
    names another that it loads, without importing its file."""
    return method_class(expected, "lit_gen") if isinstance(expected, str) else expected


def method_hparams(path: str | Path, method: str, arg: str, train_hint: str) -> dict:
    """The hyperparameters (plain data, no private keys) of the ``method`` checkpoint that init argument
    ``arg`` names, with one-line errors: a missing file (``train_hint`` says how to make one), another
    method's checkpoint, none kept."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{arg} not found: {str(path)!r} ({train_hint})")
    ckpt = read_checkpoint(path)
    check_method(ckpt, method, path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if len(hparams) <= 1:  # at most the class path
        raise CheckpointError(f"{arg} {str(path)!r} has no {method} hyperparameters")
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def check_method(ckpt: dict[str, Any], expected: type | str, path: str | Path = "checkpoint") -> None:
    """Raise if ``ckpt`` was written by another method than ``expected`` (a class or a method name)."""
    expected = expected_class(expected)
    found = ckpt.get(TAG, {}).get("class_path")
    if found != class_path(expected):
        raise CheckpointError(
            f"{str(path)!r} is a checkpoint of {found}, not of {class_path(expected)}; "
            "use a checkpoint of the same method or change model.class_path"
        )


def load_module(path: str | Path, device: str | torch.device = "cpu", expected: type | str | None = None,
                ema: bool = True):
    """The LightningModule of a lit_gen checkpoint, in eval mode on ``device``; with ``expected``, a
    checkpoint of another method raises :class:`CheckpointError`. ``ema=False`` drops the EMA weights."""
    ckpt = read_checkpoint(path)
    if expected is not None:
        check_method(ckpt, expected, path)
    source = path
    # a sharded folder: its weights gathered into one checkpoint, in memory
    if checkpoint_layout(path) != "file":
        source = io.BytesIO()
        torch.save(consolidate(path), source)
        source.seek(0)
    model = checkpoint_class(ckpt).load_from_checkpoint(source, map_location=device, weights_only=True)
    model.eval()
    if not ema:
        model.ema = None
    return model


def load_frozen(path: str | Path, device: str | torch.device, expected: type | str):
    """:func:`load_module` with every parameter frozen: a module that another method only evaluates."""
    model = load_module(path, device, expected)
    model.requires_grad_(False)
    return model


# --- weights export (safetensors) ------------------------------------------------------------------------
def sampling_state_dict(model) -> dict[str, torch.Tensor]:
    """The module's state dict with the sampling weights (EMA when there is one) as ``net.*`` and no
    ``ema.*``."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ema.")}
    if model.ema is not None:
        state.update({f"net.{k}": v for k, v in model.ema.module.state_dict().items()})
    return state


def network_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The sampling network's weights (EMA when the run kept one) of a lit_gen checkpoint (file or sharded
    folder), as the network's own state dict."""
    state = consolidate(path)["state_dict"]
    for prefix in ("ema.module.", "net."):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise CheckpointError(f"{str(path)!r} holds no network weights (net.* or ema.module.*)")


def export_weights(ckpt_path: str | Path, output: str | Path) -> Path:
    """``output`` ``.safetensors``: the sampling weights of a lit_gen checkpoint (file or sharded folder),
    with the method's class and hyperparameters (plain data, as JSON) in its metadata. ``.ckpt``: the
    checkpoint consolidated into one Lightning file (all weights, EMA included; no optimizer state). Returns
    the path."""
    from safetensors.torch import save

    output = Path(output)
    if output.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"--output {str(output)!r}: lit-gen export writes a .safetensors or a .ckpt file")
    check_new_file(output, "--output")  # before the work, not after it
    if output.suffix == ".ckpt":
        ckpt = consolidate(ckpt_path)
        return atomic_write(output, lambda file: torch.save(ckpt, file))
    ckpt = read_checkpoint(ckpt_path)
    model = load_module(ckpt_path)
    hparams = dict(ckpt.get("hyper_parameters", {}))
    hparams.pop("_instantiator", None)
    metadata = {"lit_gen": json.dumps({**ckpt[TAG], "hyper_parameters": hparams,
                                       "global_step": ckpt.get("global_step")})}
    state = {k: v.detach().contiguous().cpu() for k, v in sampling_state_dict(model).items()}
    data = save(state, metadata=metadata)
    return atomic_write(output, lambda file: file.write(data))


def read_weights_metadata(path: str | Path) -> dict[str, Any]:
    """The lit_gen metadata of an exported safetensors file: class_path, version, hyper_parameters."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - any parse failure means the file is unusable
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file "
                              f"({type(err).__name__})") from None
    if TAG not in metadata:
        raise CheckpointError(f"{str(path)!r} was not written by lit-gen export (no {TAG!r} metadata)")
    try:
        meta = json.loads(metadata[TAG])
    except json.JSONDecodeError:
        raise CheckpointError(f"{str(path)!r}: its {TAG!r} metadata is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("hyper_parameters"), dict):
        raise CheckpointError(f"{str(path)!r}: its {TAG!r} metadata has no hyper_parameters")
    check_class_path(meta.get("class_path"), repr(str(path)), f"{TAG}.class_path")
    check_file_data(meta["hyper_parameters"], repr(str(path)))
    return meta


def load_weights(path: str | Path, device: str | torch.device = "cpu", config: dict[str, Any] | None = None):
    """The LightningModule of a file written by :func:`export_weights`, in eval mode, sampling with its
    weights. ``config``: a model section (``class_path`` and ``init_args``, as in a run's config.yaml) that
    replaces the hyperparameters of the metadata (which still supply the values linked from the data: shape,
    classes)."""
    from lightning.pytorch.cli import instantiate_module
    from safetensors.torch import load_file

    meta = read_weights_metadata(path)
    hparams = dict(meta["hyper_parameters"])
    if config is not None:
        if "class_path" not in config:
            raise CheckpointError("--config: expected a model section with class_path (and init_args)")
        check_file_data(config, "--config's model section")
        hparams.update(config.get("init_args") or {})
        hparams["_class_path"] = config["class_path"]
    cls = method_class(hparams["_class_path"] if "_class_path" in hparams else meta["class_path"],
                       repr(str(path)))
    model = instantiate_module(cls, hparams) if "_class_path" in hparams else cls(**hparams)
    model.configure_model()
    model.ema = None  # the exported net.* weights are the EMA ones
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()
