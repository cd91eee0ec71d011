"""The shared base of the methods that model a noise process (DDPM, Improved DDPM, guidance, score SDEs,
NCSN): one ``sample``, inversion and option check for all of them, through the sampler assembly of
:mod:`lit_gen.sampling`. A method describes its trained model in :meth:`noise_model`; it wires no sampler."""

from __future__ import annotations

import torch
from torch import nn

from lit_gen.checkpoints import load_frozen
from lit_gen.dalle.generation import candidate_generators
from lit_gen.diffusion import GaussianDiffusion
from lit_gen.methods.base import TinyCheckpoint, eval_mode
from lit_gen.methods.generative import Abilities, GenerativeModule, SampleOutput
from lit_gen.methods.latent import LatentSpace
from lit_gen.methods.text import TextConditional, text_settings
from lit_gen.process import ClassifierGuidance, ModelFunction, drop_labels, on_model_time
from lit_gen.sampling import NoiseModel, NoiseSampleOptions, assembly
from lit_gen.score.likelihood import ode_bits_per_dim, ode_log_likelihood
from lit_gen.utils import sample_generators


def check_conditioning(class_conditional: bool, num_classes: int, p_uncond: float,
                       guidance_scale: float) -> None:
    """One-line errors for a method's class-conditioning settings (classifier-free guidance)."""
    if class_conditional and num_classes < 1:
        raise ValueError("class_conditional=True needs a dataset with labels, but num_classes=0")
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond={p_uncond} must be in [0, 1]")
    if guidance_scale != 1 and not class_conditional:
        raise ValueError(f"guidance_scale={guidance_scale} needs class_conditional=True "
                         "(an unconditional model has nothing to guide towards; 1 means no guidance)")


def conditions(class_conditional: bool, text, num_classes: int, p_uncond: float,
               guidance_scale: float) -> dict | None:
    """The text settings as plain data (:func:`~lit_gen.methods.text.text_settings`), after one-line checks of
    the conditioning settings: one condition at most, classes to condition on, CFG only with a condition."""
    text = text_settings(text)
    if text is not None and class_conditional:
        raise ValueError("class_conditional and text are two conditions; a model takes one of them")
    check_conditioning(class_conditional or text is not None, num_classes if text is None else 1, p_uncond,
                       guidance_scale)
    return text


class ClassifierGuided:
    """For a generative method that a :class:`NoisyClassifier` can guide: the classifier of
    ``classifier_ckpt`` (loaded once, frozen, checked against :meth:`classifier_process`) and the requested
    labels."""

    num_classes: int = 0

    def classifier_process(self) -> GaussianDiffusion:
        """The discrete noise process a guiding classifier must have been trained for."""
        raise NotImplementedError

    def _classifier(self, options: dict):
        """The frozen classifier of ``classifier_ckpt``, loaded once, checked against this model."""
        path = options.get("classifier_ckpt")
        if path is None:
            if options.get("classifier_scale") is not None or options.get("classifier_form") not in (None,
                                                                                                     "auto"):
                raise ValueError("classifier_scale and classifier_form need a classifier: give "
                                 "classifier_ckpt")
            return None
        # loaded for guidance, never saved with the model
        cache = self.__dict__.setdefault("_classifiers", {})
        if path not in cache:
            classifier = load_frozen(path, self.device, "NoisyClassifier")
            if tuple(classifier.data_shape) != tuple(self.data_shape):
                raise ValueError(f"classifier {path} reads data of shape {tuple(classifier.data_shape)}, but "
                                 f"this model's process lives in shape {tuple(self.data_shape)}"
                                 + (" (an autoencoder's latents)" if self.autoencoder is not None else ""))
            classifier.check_process(self.classifier_process(), path)
            if self.num_classes and classifier.num_classes != self.num_classes:
                raise ValueError(f"classifier {path} has {classifier.num_classes} classes, the model "
                                 f"{self.num_classes}")
            cache[path] = classifier
        return cache[path]

    def label_classes(self, options: dict) -> int:
        """The model's classes, or the guiding classifier's for an unconditional model."""
        classifier = self._classifier(options)
        return self.num_classes or (classifier.num_classes if classifier is not None else 0)

    def _labels(self, num_samples: int, labels: torch.Tensor | None, num_classes: int | None = None):
        """Requested labels (B,) on the device, balanced over the classes by default; None without classes."""
        num_classes = self.num_classes if num_classes is None else num_classes
        if not num_classes:
            if labels is not None:
                raise ValueError(f"labels were given, but this {type(self).__name__} is unconditional; train "
                                 "it with class_conditional: true, or guide it with a classifier "
                                 "(classifier_ckpt)")
            return None
        if labels is None:
            labels = torch.arange(num_samples) % num_classes
        labels = torch.as_tensor(labels, dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise ValueError(f"label {bad[0].item()} is out of range: the model has {num_classes} classes "
                             f"(0 to {num_classes - 1})")
        return labels.to(self.device)


def ode_likelihood(function: ModelFunction, x: torch.Tensor, generator=None, **options) -> dict:
    """The probability-flow ODE likelihood of x (B, ...) under a model function: ``bpd`` for 8-bit images
    (C, H, W), ``log_p`` (nats) for vectors, and ``nfe``. ``options``: trace, n_probes, rtol, atol."""
    if x.ndim == 4:
        return ode_bits_per_dim(function, x, generator, **options)
    return ode_log_likelihood(function, x, generator=generator, **options)


class NoiseProcessMethod(TextConditional, LatentSpace, ClassifierGuided, GenerativeModule):
    """Sampling of a model of a noise process, with the options of :class:`NoiseSampleOptions`; conditioned on
    classes or on text (:class:`~lit_gen.methods.text.TextConditional`), on images or on an autoencoder's
    latents (:class:`~lit_gen.methods.latent.LatentSpace`)."""

    SampleOptions = NoiseSampleOptions
    abilities = Abilities(inpainting=True, latents=True)

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        tiny = super().tiny_args(init_args, data_shape)
        if init_args.get("autoencoder_ckpt"):
            tiny["autoencoder_ckpt"] = TinyCheckpoint("Autoencoder", {"data_shape": tuple(data_shape)})
        if init_args.get("text"):
            tiny["text"] = {**init_args["text"], "dim": 16, "depth": 1, "heads": 2}
        return tiny

    @classmethod
    def abilities_of(cls, hparams: dict) -> Abilities:
        """A text-conditional model draws from prompts; a latent model does not inpaint pixels."""
        latent = bool(hparams.get("autoencoder_ckpt") or hparams.get("autoencoder_hparams"))
        return Abilities(prompts=hparams.get("text") is not None, inpainting=not latent, latents=True)

    def init_conditions(self, text: dict | None, autoencoder_ckpt: str | None,
                        autoencoder_hparams: dict | None, data_shape: tuple[int, ...],
                        latent_cache: str | None = None) -> tuple[int, ...]:
        """Text and latent space set up from the init arguments; the shape the process lives in."""
        self.init_text(text)
        if "text" in self.hparams:  # plain data in checkpoints, a CLIP's architecture filled in
            self.hparams["text"] = text
        shape = self.init_latent(autoencoder_ckpt, autoencoder_hparams, data_shape, latent_cache)
        self.abilities = self.abilities_of(self.hparams)
        return shape

    def denoiser(self, factory, data_shape: tuple[int, ...], num_classes: int, out_channels: int):
        """``factory``'s net for this model: a class-conditional or unconditional denoiser, or with text, one
        that cross-attends to its text encoder."""
        if self.text is not None:
            return self.text_net(factory, data_shape, out_channels)
        return factory(data_shape, num_classes, out_channels)

    def condition_of(self, batch: dict, p_uncond: float = 0.0) -> torch.Tensor | None:
        """The network's condition for a batch: its captions' ids (text), its labels (class-conditional) or
        None; with ``p_uncond``, each replaced by the null condition with that probability (for CFG)."""
        if self.text is not None:
            y, null = self.caption_ids(batch["caption"]), self.null_text
        elif self.num_classes:
            y, null = batch["y"], self.num_classes
        else:
            return None
        return drop_labels(y, p_uncond, null) if p_uncond > 0 else y

    # --- fit start: the tokenizer, the autoencoder and its latent scale, a CLIP's text tower ---------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.setup_text(self.trainer)
            if self.trainer.ckpt_path is None:
                self.load_autoencoder(self.hparams.get("autoencoder_ckpt"))

    def configure_model(self) -> None:
        fresh = "net" not in self._modules and self._fitting_afresh() and self.trainer.ckpt_path is None
        super().configure_model()
        if fresh:
            self.load_clip_text()

    def on_fit_start(self) -> None:
        if self.autoencoder is not None:
            self.load_latent_cache()
            self.measure_latent_scale(self.trainer.datamodule.train_dataset)

    def on_train_epoch_end(self) -> None:
        self.save_latent_cache()

    def noise_model(self, net: nn.Module) -> NoiseModel:
        """This model, with ``net`` as its network, as the sampler assembly sees it."""
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, generator=None, net: nn.Module | None = None,
                       **options) -> dict:
        """The probability-flow ODE likelihood of x (B, ...) on the model's own process, from its t_min (the
        unconditional model of a conditional one); ``options``: trace, n_probes, rtol, atol (see
        :func:`ode_likelihood`)."""
        self.check_image_likelihood()
        model = self.noise_model(net or self.sampling_net)
        function = ModelFunction(on_model_time(lambda x_, s: model.net(x_, s, None), model.sde), model.sde,
                                 model.layout)
        return ode_likelihood(function, x, generator, **options)

    @property
    def clip_denoised(self) -> bool:
        """Clamp predicted x0 to [-1, 1] while sampling: as configured on images, never on latents."""
        return self.hparams.clip_denoised and self.autoencoder is None

    def check_image_likelihood(self) -> None:
        """A one-line error when the model is of an autoencoder's latents: it has no likelihood of images."""
        if self.autoencoder is not None:
            raise ValueError(f"this {type(self).__name__} models an autoencoder's latents: its ODE "
                             "likelihood would be of latents, not of images")

    def _guidance(self, num_samples: int, labels: torch.Tensor | None, options: dict,
                  captions: list[str] | None = None) -> tuple[torch.Tensor | None, ClassifierGuidance | None]:
        """(the requested labels or captions' ids, or None for an unguided unconditional model; the classifier
        guidance)."""
        if self.text is not None:
            if labels is not None or options.get("classifier_ckpt") is not None:
                raise ValueError(f"this {type(self).__name__} is conditioned on text, not labels: give "
                                 "captions (lit-gen sample --text or --text_file), without --labels or "
                                 "classifier_ckpt")
            if captions is None:  # checking options: the null caption stands for any
                return self.null_text.to(self.device).expand(num_samples, -1), None
            return self.caption_ids(captions), None
        if captions is not None:
            raise ValueError(f"captions were given, but this {type(self).__name__} is not text-conditional "
                             "(train it with text: {...} on a captioned data set)")
        classifier = self._classifier(options)
        classes = self._labels(num_samples, labels, self.label_classes(options))
        if classifier is None:
            return classes, None
        scale = options.get("classifier_scale")
        return classes, ClassifierGuidance(classifier.logits, classes, 1.0 if scale is None else scale)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generators: list[torch.Generator] | None = None,
        labels: torch.Tensor | None = None,
        progress: bool = False,
        trajectory_points: int = 0,
        latents: torch.Tensor | None = None,
        inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
        captions: list[str] | None = None,
        prompt_indices: list[int] | None = None,
        **options,
    ) -> SampleOutput:
        """Sample with the options of :class:`NoiseSampleOptions` from x_T ~ the prior (or ``latents``, e.g.
        from :meth:`invert` or an interpolation). ``labels`` (B,) are the requested classes of a conditional
        or classifier-guided model (default: balanced over the classes); ``inpaint`` = (x_known, mask) fills
        in where mask is 0 (solvers of lit_gen.score); ``captions`` (one per sample) prompt a text-conditional
        model (default: validation captions). A latent model's samples and trajectory are decoded to
        images."""
        self.check_options(options, self.sample_options, type(self).__name__)
        (n, keep, clip), options = self.candidates(options)
        if inpaint is not None and self.autoencoder is not None:
            raise ValueError(f"this {type(self).__name__} models latents: it cannot inpaint pixels")
        if captions is None and labels is None and self.text is not None:
            captions = self.default_captions(num_samples, prompt_indices)
        if captions is not None and len(captions) != num_samples:
            raise ValueError(f"got {len(captions)} captions for {num_samples} samples")
        if n > 1:  # prompt-major candidates, candidate j of prompt i from (the seed of generators[i], j)
            if latents is not None or captions is None or trajectory_points:
                raise ValueError("num_candidates draws candidates of prompts (captions), each from its own "
                                 "noise: give captions, and no latents, labels or trajectory")
            generators = generators or sample_generators(self.seed, 0, num_samples)
            generators = [g for gen in generators for g in candidate_generators(gen, n, self.device)]
            captions, num_samples = [c for c in captions for _ in range(n)], num_samples * n
        with eval_mode(self.sampling_net) as net:
            model = self.noise_model(net)
            shape = (num_samples, *self.data_shape)
            x_T = model.sde.prior_sampling(shape, generators, self.device) if latents is None else latents
            condition, classifier = self._guidance(num_samples, labels, options, captions)
            if inpaint is not None:
                inpaint = tuple(a.to(self.device) for a in inpaint)
            x, trajectory, nfe = assembly.sample(model, options, x_T, generators, condition, classifier,
                                                 progress, trajectory_points, inpaint)
        classes, scores = (None, None) if self.text is not None else (condition, None)
        x = self.decode_latents(x)
        if captions is not None:  # DALL-E's reranking of each prompt's candidates (a no-op without a CLIP)
            x, captions, scores = self.rerank(x, captions, n, keep, clip)
        return SampleOutput(x, classes, [self.decode_latents(z) for z in trajectory], nfe=nfe,
                            captions=captions, scores=scores)

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                 **options) -> torch.Tensor:
        """dx_t/dt = d_alpha x0 + d_sigma eps at x (B, ...) and continuous t (B,) float64 on the model's own
        path: the probability-flow ODE's velocity field, of a DDPM or score checkpoint as of a flow-matching
        one (with the classifier-free guidance of ``options`` on a conditional model)."""
        with eval_mode(self.sampling_net) as net:
            model = self.noise_model(net)
            fn, _ = assembly.guided(model, options, labels, None, device=x.device)
            return ModelFunction(fn, model.sde, model.layout).ode_drift(x, t.to(x.device))

    def check_sample_options(self, options: dict, labels: torch.Tensor | None = None) -> None:
        """Build the sampler and the guided model function (loading and checking a classifier) without
        sampling."""
        self.check_options(options, self.sample_options, type(self).__name__)
        (_, _, clip), options = self.candidates(options)
        if clip is not None:
            self.load_clip(clip)
        classes, classifier = self._guidance(1 if labels is None else len(labels), labels, options)
        assembly.check(self.noise_model(self.sampling_net), options, classes, classifier)

    def deterministic_options(self, options: dict) -> dict:
        """Latent interpolation and inversion: deterministic DDIM or a probability-flow ODE solver."""
        return assembly.deterministic_options(self.noise_model(self.sampling_net), options)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, labels: torch.Tensor | None = None, progress: bool = False,
               **options) -> torch.Tensor:
        """Encode x0 to its latent x_T by the deterministic sampler of ``options`` run backwards."""
        labels = self._labels(x0.shape[0], labels) if self.num_classes else None  # a classifier's: unused
        x0 = self.encode_images(x0.to(self.device))  # a latent model inverts the image's latents
        with eval_mode(self.sampling_net) as net:
            return assembly.invert(self.noise_model(net), options, x0, labels, progress)

    def log_likelihood_metrics(self, out: dict) -> None:
        """test/bpd on 8-bit images or test/nll (nats) on vectors, and test/nfe, of :func:`ode_likelihood`."""
        name, value = ("bpd", out["bpd"]) if "bpd" in out else ("nll", -out["log_p"])
        self.log(f"test/{name}", value.mean().float(), sync_dist=True, prog_bar=True)
        self.log("test/nfe", float(out["nfe"]), sync_dist=True, prog_bar=True)
