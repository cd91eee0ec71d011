"""The shared base of the methods that model a noise process (DDPM, Improved DDPM, guidance, score SDEs,
NCSN): one ``sample``, inversion and option check for all of them, through the sampler assembly of
:mod:`lit_gen.sampling`. A method describes its trained model in :meth:`noise_model`; it wires no sampler."""

from __future__ import annotations

import torch
from torch import nn

from lit_gen.methods.base import eval_mode
from lit_gen.methods.generative import Abilities, GenerativeModule, SampleOutput
from lit_gen.methods.noisy_classifier import ClassifierGuided
from lit_gen.process import ClassifierGuidance
from lit_gen.sampling import NoiseModel, NoiseSampleOptions, assembly


class NoiseProcessMethod(ClassifierGuided, GenerativeModule):
    """Sampling of a model of a noise process, with the options of :class:`NoiseSampleOptions`."""

    SampleOptions = NoiseSampleOptions
    abilities = Abilities(inpainting=True, latents=True)

    def noise_model(self, net: nn.Module) -> NoiseModel:
        """This model, with ``net`` as its network, as the sampler assembly sees it."""
        raise NotImplementedError

    def _guidance(self, num_samples: int, labels: torch.Tensor | None,
                  options: dict) -> tuple[torch.Tensor | None, ClassifierGuidance | None]:
        """(the requested labels, or None for an unguided unconditional model; the classifier guidance)."""
        classifier = self._classifier(options)
        num_classes = self.num_classes or (classifier.num_classes if classifier is not None else 0)
        classes = self._labels(num_samples, labels, num_classes)
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
        **options,
    ) -> SampleOutput:
        """Sample with the options of :class:`NoiseSampleOptions` from x_T ~ the prior (or ``latents``, e.g.
        from :meth:`invert` or an interpolation). ``labels`` (B,) are the requested classes of a conditional
        or classifier-guided model (default: balanced over the classes); ``inpaint`` = (x_known, mask) fills
        in where mask is 0 (solvers of lit_gen.score)."""
        self.check_options(options, self.sample_options, type(self).__name__)
        with eval_mode(self.sampling_net) as net:
            model = self.noise_model(net)
            shape = (num_samples, *self.data_shape)
            x_T = model.sde.prior_sampling(shape, generators, self.device) if latents is None else latents
            classes, classifier = self._guidance(num_samples, labels, options)
            if inpaint is not None:
                inpaint = tuple(a.to(self.device) for a in inpaint)
            x, trajectory, nfe = assembly.sample(model, options, x_T, generators, classes, classifier,
                                                 progress, trajectory_points, inpaint)
        return SampleOutput(x, classes, trajectory, nfe=nfe)

    def check_sample_options(self, options: dict, labels: torch.Tensor | None = None) -> None:
        """Build the sampler and the guided model function (loading and checking a classifier) without
        sampling."""
        self.check_options(options, self.sample_options, type(self).__name__)
        classes, classifier = self._guidance(1 if labels is None else len(labels), labels, options)
        assembly.check(self.noise_model(self.sampling_net), options, classes, classifier)

    def deterministic_options(self, options: dict) -> dict:
        """Latent interpolation and inversion: deterministic DDIM or a probability-flow ODE solver."""
        return assembly.deterministic_options(self.noise_model(self.sampling_net), options)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, labels: torch.Tensor | None = None, progress: bool = False,
               **options) -> torch.Tensor:
        """Encode x0 to its latent x_T by the deterministic sampler of ``options`` run backwards."""
        labels = self._labels(x0.shape[0], labels)
        with eval_mode(self.sampling_net) as net:
            return assembly.invert(self.noise_model(net), options, x0.to(self.device), labels, progress)
