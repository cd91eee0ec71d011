"""Multi-scale flows on images (B, C, H, W): RealNVP and Glow.

Both take images already preprocessed (dequantised, optionally logit-transformed; see
``lit_gen.flows.preprocess``) and return log p in nats on that scale.
"""

from __future__ import annotations

from typing import Literal

from lit_gen.flows.conditioners import GlowConditioner, Norm, ResNetConditioner
from lit_gen.flows.core import FlowLayer, FlowSequence
from lit_gen.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ScaleFn,
    channel_mask,
    checkerboard_mask,
    coupling_channels,
)
from lit_gen.flows.distributions import DiagonalGaussian, StandardNormal
from lit_gen.flows.flow import Flow, Split
from lit_gen.flows.layers import ActNorm, BatchNormFlow, InvertibleConv1x1, Permutation, Squeeze
from lit_gen.flows.spline import SplineCoupling
from lit_gen.utils import check_choice


def _check_image_shape(data_shape: tuple[int, ...], num_halvings: int, what: str) -> tuple[int, int, int]:
    if len(data_shape) != 3:
        raise ValueError(f"{what} needs data_shape=(C, H, W), got data_shape={data_shape}")
    C, H, W = data_shape
    factor = 2**num_halvings
    if H % factor or W % factor:
        raise ValueError(f"{what}: image size {H}x{W} is not divisible by 2**{num_halvings}={factor}")
    return C, H, W


def _norm_layer(norm: Norm, channels: int) -> list[FlowLayer]:
    if norm == "actnorm":
        return [ActNorm(channels)]
    if norm == "batchnorm":
        return [BatchNormFlow(channels)]
    return []


class RealNVP(Flow):
    """RealNVP (Dinh et al. 2017, Sec. 3.6 and 4.1).

    Each scale but the last: ``num_steps_per_scale`` affine couplings with alternating checkerboard masks,
    a squeeze, ``num_steps_per_scale`` couplings with alternating channel masks, then half of the channels
    are factored out with an N(0, I) prior. The last scale: ``num_steps_per_scale + 1`` checkerboard
    couplings (the paper's 3 and 4). Every coupling is followed by a normalisation layer (Sec. 3.7) and has a
    ResNet conditioner.
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"num_steps_per_scale": 1, "hidden_channels": 4, "num_blocks": 1}

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_scales: int = 2,
        num_steps_per_scale: int = 3,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        scale_fn: ScaleFn = "tanh",
        norm: Norm = "batchnorm",
    ):
        """Build RealNVP.

        Args:
            data_shape: Shape of one image, (C, H, W); H and W divisible by 2 ** (num_scales - 1).
            num_scales: Number of scales; the image is squeezed and half-factored between scales.
            num_steps_per_scale: Couplings per mask type per scale (3 in the paper).
            hidden_channels: Width of the ResNet conditioners (64 on CIFAR-10 in the paper).
            num_blocks: Residual blocks per conditioner (8 on CIFAR-10 in the paper).
            scale_fn: Coupling scale, ``tanh`` (RealNVP's released code; identity at init) or ``sigmoid``
                (Glow's sigmoid(h + 2)).
            norm: ``batchnorm`` (the paper: batch statistics in training, running averages in eval and
                sampling), ``actnorm`` (Glow's data-dependent init; batch-size independent) or ``none``;
                used after every coupling and inside the conditioners.
        """
        check_choice("norm", norm, {"actnorm", "batchnorm", "none"})
        if num_scales < 1:
            raise ValueError(f"num_scales={num_scales} must be >= 1")
        C, H, W = _check_image_shape(tuple(data_shape), num_scales - 1, "RealNVP")

        def coupling(mask, channels: int) -> list[FlowLayer]:
            c_in, c_out = coupling_channels(mask, channels)
            net = ResNetConditioner(c_in, 2 * c_out, hidden_channels, num_blocks, norm)
            return [AffineCoupling(mask, net, scale_fn), *_norm_layer(norm, channels)]

        levels, splits = [], []
        for scale in range(num_scales):
            last = scale == num_scales - 1
            layers: list[FlowLayer] = []
            for k in range(num_steps_per_scale + (1 if last else 0)):
                layers += coupling(checkerboard_mask(H, W, k % 2), C)
            if not last:
                layers.append(Squeeze())
                C, H, W = 4 * C, H // 2, W // 2  # (4C, H/2, W/2)
                for k in range(num_steps_per_scale):
                    layers += coupling(channel_mask(C, k % 2), C)
                splits.append(Split(C, learn_prior=False))
                C = C - C // 2
            levels.append(FlowSequence(layers))
        super().__init__(data_shape, levels, splits, StandardNormal((C, H, W)))


class Glow(Flow):
    """Glow (Kingma & Dhariwal 2018, Sec. 3-4, Fig. 2).

    L levels, each a squeeze, K steps of flow (ActNorm -> invertible 1x1 convolution -> coupling), and,
    between levels, a split that factors out half the channels. With ``learn_prior`` the factored halves
    have a learned conditional Gaussian prior given the kept half, and the top prior has a learned mean and
    std ("learntop" in the released code); otherwise every prior is N(0, I). The coupling is affine (Glow),
    additive (NICE) or a rational-quadratic spline (Durkan et al. 2019 use RQ spline couplings inside
    Glow's multi-scale architecture for images).
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"num_levels": 2, "num_steps": 1, "hidden_channels": 4}

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_levels: int = 3,
        num_steps: int = 32,
        hidden_channels: int = 512,
        learn_prior: bool = True,
        coupling: Literal["affine", "additive", "spline"] = "affine",
        scale_fn: ScaleFn = "sigmoid",
        permutation: Literal["conv1x1", "shuffle", "reverse"] = "conv1x1",
        lu_decomposed: bool = True,
        num_bins: int = 8,
        tail_bound: float = 3.0,
    ):
        """Build Glow.

        Args:
            data_shape: Shape of one image, (C, H, W); H and W divisible by 2 ** num_levels.
            num_levels: L, the number of levels (3 for CIFAR-10, 6 for 256x256 in the paper).
            num_steps: K, steps of flow per level (32 in the paper).
            hidden_channels: Width of the coupling networks (512 in the paper).
            learn_prior: Learned conditional priors for the split latents and a learned top prior.
            coupling: ``affine``, ``additive`` (volume preserving, as in NICE; Glow Sec. 5.1 compares both) or
                ``spline`` (rational-quadratic neural spline on [-tail_bound, tail_bound], identity outside;
                starts as the identity map).
            scale_fn: Affine coupling scale: ``sigmoid`` (Glow's sigmoid(h + 2)) or ``tanh`` (RealNVP).
            permutation: Channel mixing before each coupling: the learned ``conv1x1``, a fixed random
                ``shuffle`` or ``reverse`` (Glow Sec. 5.1 compares the three).
            lu_decomposed: Parameterise the 1x1 convolution by its LU decomposition (Glow Sec. 3.2).
            num_bins: Spline bins K (``spline`` only).
            tail_bound: Spline interval [-B, B] (``spline`` only).
        """
        check_choice("coupling", coupling, {"affine", "additive", "spline"})
        check_choice("permutation", permutation, {"conv1x1", "shuffle", "reverse"})
        if num_levels < 1:
            raise ValueError(f"num_levels={num_levels} must be >= 1")
        C, H, W = _check_image_shape(tuple(data_shape), num_levels, "Glow")

        levels, splits = [], []
        for level in range(num_levels):
            layers: list[FlowLayer] = [Squeeze()]
            C, H, W = 4 * C, H // 2, W // 2  # (4C, H/2, W/2)
            for k in range(num_steps):
                layers.append(ActNorm(C))
                if permutation == "conv1x1":
                    layers.append(InvertibleConv1x1(C, lu_decomposed))
                else:
                    layers.append(Permutation(C, permutation, seed=1000 * level + k))
                layers.append(_glow_coupling(C, coupling, hidden_channels, scale_fn, num_bins, tail_bound))
            levels.append(FlowSequence(layers))
            if level < num_levels - 1:
                splits.append(Split(C, learn_prior))
                C = C - C // 2
        prior = DiagonalGaussian((C, H, W)) if learn_prior else StandardNormal((C, H, W))
        super().__init__(data_shape, levels, splits, prior)


def _glow_coupling(C: int, coupling: str, hidden_channels: int, scale_fn: ScaleFn, num_bins: int,
                   tail_bound: float) -> FlowLayer:
    """One step's coupling on C channels: the first half x_a conditions the transform of the second x_b."""
    mask = channel_mask(C, 0)
    c_a, c_b = coupling_channels(mask, C)
    if coupling == "affine":
        return AffineCoupling(mask, GlowConditioner(c_a, 2 * c_b, hidden_channels), scale_fn)
    if coupling == "additive":
        return AdditiveCoupling(mask, GlowConditioner(c_a, c_b, hidden_channels))
    out_channels = SplineCoupling.params_per_element(num_bins) * c_b
    return SplineCoupling(mask, GlowConditioner(c_a, out_channels, hidden_channels), num_bins, tail_bound)
