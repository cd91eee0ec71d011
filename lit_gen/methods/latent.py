"""Latent diffusion (Rombach et al. 2022): a noise-process method given ``autoencoder_ckpt`` models the
latents of a frozen :class:`~lit_gen.methods.Autoencoder` scaled to unit variance, and decodes its samples to
images. The autoencoder's weights are kept in the model's checkpoints, so sampling needs only them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from lit_gen.checkpoints import load_frozen, method_hparams
from lit_gen.files import atomic_write
from lit_gen.nets.autoencoder import AutoencoderNet, posterior_sample
from lit_gen.sharding import gathered

# training images the latent scale is measured on (the first ones: the same on every rank)
SCALE_IMAGES = 2048
# the in-memory latent cache's bound per process (16x16x8 fp32 moments: 8 KiB an image, 262,144 images)
CACHE_BYTES = 2 << 30
ARCHITECTURE = ("latent_channels", "channels", "channel_mults", "res_blocks")


def fp32_moments(net: AutoencoderNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior moments of images in fp32, outside autocast, whatever the weights' dtype (a bf16
    engine casts every module)."""
    dtype = next(net.parameters()).dtype
    with torch.autocast(x.device.type, enabled=False):
        mean, logvar = net.moments(x.to(dtype))
    return mean.float(), logvar.float()


def weights_digest(net: torch.nn.Module) -> str:
    """A digest of a network's weights: which autoencoder a cache file was made by."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """The posterior moments (mean, log-variance) of each training image, computed once: keyed by a digest of
    the image's 8-bit pixels (a flipped image is another one), valid as long as the frozen autoencoder is.
    :meth:`save` and :meth:`load` keep it in a file across runs (every model on one autoencoder). It holds at
    most ``max_bytes``: images beyond (random crops of a large folder) are encoded at every step."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.moments: dict[bytes, torch.Tensor] = {}
        self.saved = 0  # entries the file holds
        self.max_bytes, self.full = max_bytes, False

    def save(self, path: str | Path, autoencoder: str) -> None:
        """Write the cache to ``path`` (atomically), tagged with the autoencoder's weights digest."""
        if len(self.moments) == self.saved:
            return
        keys = torch.tensor([list(k) for k in self.moments], dtype=torch.uint8)
        moments = torch.stack(list(self.moments.values()))
        data = {"autoencoder": autoencoder, "keys": keys, "moments": moments}
        atomic_write(path, lambda file: torch.save(data, file))
        self.saved = len(self.moments)

    def load(self, path: str | Path, autoencoder: str) -> bool:
        """Read the cache at ``path`` if it was made by this autoencoder (False, and nothing read, if not)."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("autoencoder") != autoencoder:
            return False
        self.store({bytes(k.tolist()): m for k, m in zip(data["keys"], data["moments"], strict=True)})
        self.saved = len(self.moments)
        return True

    def __call__(self, net: AutoencoderNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        keys = [hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in pixels]
        missing = [i for i, key in enumerate(keys) if key not in self.moments]
        fresh = {}
        if missing:
            mean, logvar = fp32_moments(net, x[missing])
            fresh = dict(zip([keys[i] for i in missing], torch.cat([mean, logvar], 1).cpu(), strict=True))
            self.store(fresh)
        moments = [self.moments[key] if key in self.moments else fresh[key] for key in keys]
        return torch.stack(moments).to(x.device).chunk(2, dim=1)

    def store(self, fresh: dict[bytes, torch.Tensor]) -> None:
        """Keep new moments while the cache has room."""
        if not fresh:
            return
        room = self.max_bytes // next(iter(fresh.values())).nbytes - len(self.moments)
        if room < len(fresh) and not self.full:
            self.full = True
            print(f"lit-gen: the latent cache is full ({self.max_bytes / 2**30:g} GiB): images beyond its "
                  f"{len(self.moments) + max(room, 0)} are encoded at every step", file=sys.stderr)
        self.moments.update((k, m.clone()) for k, m in list(fresh.items())[: max(room, 0)])


def autoencoder_hparams(path: str | None) -> dict:
    """The Autoencoder hyperparameters of the checkpoint at ``path`` (one-line errors for anything else)."""
    hparams = method_hparams(path, "Autoencoder", "autoencoder_ckpt", "train the autoencoder first: lit-gen "
                             "fit --config experiments/t2i/autoencoder_shapes.yaml")
    return {k: hparams[k] for k in ("data_shape", *ARCHITECTURE)}


class LatentSpace:
    """What a noise-process method needs to model latents: the frozen autoencoder, the latent scale (measured
    on the training data at fit start, kept in the checkpoint), the latents of a batch, decoding."""

    def init_latent(self, path: str | None, hparams: dict | None, data_shape: tuple[int, ...],
                    cache_file: str | None = None) -> tuple:
        """The shape the model's process lives in: ``data_shape``, or the autoencoder's latent shape;
        ``cache_file``: where the training images' posterior moments are kept across runs."""
        self.image_shape = tuple(data_shape)
        self.autoencoder: AutoencoderNet | None = None
        self.latent_cache_file = cache_file
        if path is None and hparams is None:
            return self.image_shape
        hparams = hparams or autoencoder_hparams(path)
        self.hparams["autoencoder_hparams"] = hparams
        if tuple(hparams["data_shape"]) != self.image_shape:
            raise ValueError(f"the autoencoder {path} was trained on images of shape "
                             f"{tuple(hparams['data_shape'])}, but the data here have shape "
                             f"{self.image_shape}: use the same data set and image_size")
        self.autoencoder = AutoencoderNet(self.image_shape, *(hparams[k] for k in ARCHITECTURE))
        self.autoencoder.requires_grad_(False).eval()
        self.register_buffer("latent_scale", torch.zeros(()))  # 0: not measured yet
        self.latent_cache = LatentCache()
        self._autoencoder_loaded = False
        return tuple(self.autoencoder.latent_shape)

    def load_autoencoder(self, path: str | None) -> None:
        """At a fresh fit: the autoencoder's sampling weights from ``path``, once (a checkpoint of this model
        holds them already)."""
        if self.autoencoder is None or self._autoencoder_loaded or path is None:
            return
        frozen = load_frozen(path, "cpu", "Autoencoder")
        self.autoencoder.load_state_dict(frozen.sampling_net.state_dict())
        self._autoencoder_loaded = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._autoencoder_loaded = True

    def load_latent_cache(self) -> None:
        """At fit start, on every rank: the cached moments of ``latent_cache`` if its file was made by this
        autoencoder."""
        path = self.latent_cache_file
        if self.autoencoder is None or path is None:
            return
        with gathered(self.autoencoder):  # a collective under ZeRO-3: every rank, here
            self._autoencoder_digest = weights_digest(self.autoencoder)
        if not Path(path).exists():
            return
        if not self.latent_cache.load(path, self._autoencoder_digest) and self.global_rank == 0:
            print(f"lit-gen: {path} holds the latents of another autoencoder: they are computed again "
                  "and the file rewritten", file=sys.stderr)
        elif self.global_rank == 0:
            print(f"lit-gen: {len(self.latent_cache.moments)} cached latents read from {path}",
                  file=sys.stderr)

    def save_latent_cache(self) -> None:
        """After each training epoch, on rank 0: the cache written to ``latent_cache`` (when it grew)."""
        if self.autoencoder is None or self.latent_cache_file is None or self.global_rank != 0:
            return
        self.latent_cache.save(self.latent_cache_file, self._autoencoder_digest)

    @torch.no_grad()
    def measure_latent_scale(self, dataset, generator_seed: int = 0) -> None:
        """latent_scale = 1 / std of posterior samples of the first ``SCALE_IMAGES`` training images (the role
        of Stable Diffusion's 0.18215), unless a checkpoint brought it."""
        if self.autoencoder is None or float(self.latent_scale) > 0:
            return
        n = min(SCALE_IMAGES, len(dataset))
        generator = torch.Generator(device=self.device).manual_seed(generator_seed)
        std = self.training_points(dataset, range(n), generator, scaled=False).std()
        # rank 0's (a random flip may differ between ranks, and sharded strategies broadcast no buffers)
        scale = torch.tensor(1.0 / float(std), device=self.device)
        if self._trainer is not None:
            scale = self.trainer.strategy.broadcast(scale, src=0)
        self.latent_scale.fill_(float(scale))
        if self.global_rank == 0:
            print(f"lit-gen: latent scale {float(self.latent_scale):.5g} (1 / std of the latents of {n} "
                  "training images)", file=sys.stderr)

    @torch.no_grad()
    def training_points(self, dataset, indices, generator: torch.Generator | None = None,
                        scaled: bool = True) -> torch.Tensor:
        """What the model trains on, for the items of ``dataset`` at ``indices`` (float64, on the CPU): their
        images, or their posterior samples drawn with ``generator`` (times the latent scale when ``scaled``);
        encoded 256 at a time (a collective under ZeRO-3: every rank calls it)."""
        indices, points = list(indices), []
        for start in range(0, len(indices), 256):
            x = torch.stack([dataset[int(i)]["x"] for i in indices[start : start + 256]]).to(self.device)
            if self.autoencoder is not None:
                with gathered(self.autoencoder):
                    x = posterior_sample(*fp32_moments(self.autoencoder, x), generator)
                x = x * self.latent_scale if scaled else x
            points.append(x.double().cpu())
        return torch.cat(points)

    def latent_batch(self, batch: dict, sample: bool) -> dict:
        """The batch with images ``x`` replaced by their scaled latents: a posterior sample (training; the
        global RNG, seeded per step) or the posterior mean."""
        if self.autoencoder is None:
            return batch
        with torch.no_grad(), gathered(self.autoencoder):
            mean, logvar = self.latent_cache(self.autoencoder, batch["x"])
        z = posterior_sample(mean, logvar) if sample else mean
        return {**batch, "x": (z * self.latent_scale).to(batch["x"].dtype)}

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images (the posterior mean); images unchanged for a model of images."""
        if self.autoencoder is None:
            return x
        with gathered(self.autoencoder):
            return fp32_moments(self.autoencoder, x)[0] * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of scaled latents; latents unchanged for a model of images."""
        if self.autoencoder is None:
            return z
        dtype = next(self.autoencoder.parameters()).dtype
        with gathered(self.autoencoder), torch.autocast(z.device.type, enabled=False):
            return self.autoencoder.decode((z.float() / self.latent_scale).to(dtype)).float().clamp(-1, 1)
