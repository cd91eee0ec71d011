"""Flows on vectors (B, D), e.g. 2-D toy data: NICE, a RealNVP/Glow-style coupling stack with an MLP
conditioner, and stacks of planar or radial flows (density models in both directions). NICE and MLPFlow
also take images (C, H, W), which they model as flat vectors of D = C*H*W features (NICE's own setting on
MNIST)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from lit_gen.flows.conditioners import MLPConditioner
from lit_gen.flows.core import FlowLayer, FlowSequence
from lit_gen.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ScaleFn,
    alternating_mask,
    channel_mask,
    coupling_channels,
)
from lit_gen.flows.distributions import StandardLogistic, StandardNormal
from lit_gen.flows.flow import Flow
from lit_gen.flows.layers import ActNorm, BatchNormFlow, DiagonalScaling, Flatten, InvertibleConv1x1
from lit_gen.flows.planar import PlanarTransform, RadialTransform
from lit_gen.flows.spline import SplineCoupling
from lit_gen.utils import check_choice


def _flat_dim(data_shape: Sequence[int]) -> tuple[int, list[FlowLayer]]:
    """D = prod(data_shape), and the layers that flatten a sample of that shape to (D,)."""
    data_shape = tuple(data_shape)
    dim = math.prod(data_shape)
    if dim < 2:
        raise ValueError(f"coupling flows need at least 2 dimensions, got data_shape={data_shape}")
    return dim, ([Flatten(data_shape)] if len(data_shape) > 1 else [])


class NICE(Flow):
    """NICE (Dinh et al. 2014): additive couplings on alternating halves (odd / even features) and a final
    diagonal scaling layer. The paper uses 4 couplings, ReLU MLPs with 5 hidden layers of 1000 units, and a
    logistic prior on images (Sec. 5.1)."""

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"num_coupling_layers": 2, "hidden_features": 8, "num_hidden_layers": 1}

    def __init__(
        self,
        data_shape: Sequence[int],
        num_coupling_layers: int = 4,
        hidden_features: int = 1000,
        num_hidden_layers: int = 5,
        prior: Literal["gaussian", "logistic"] = "gaussian",
    ):
        """Build NICE.

        Args:
            data_shape: Shape of one sample, (D,) or (C, H, W) (flattened to D = C*H*W).
            num_coupling_layers: Number of additive coupling layers; consecutive ones change the other half.
            hidden_features: Width of the conditioner MLPs.
            num_hidden_layers: Hidden layers per conditioner MLP.
            prior: ``gaussian`` (N(0, I)) or ``logistic`` (standard logistic, NICE's choice for images).
        """
        dim, layers = _flat_dim(data_shape)
        check_choice("prior", prior, {"gaussian", "logistic"})
        for i in range(num_coupling_layers):
            mask = alternating_mask(dim, i % 2)
            d_a, d_b = coupling_channels(mask, dim)
            layers.append(AdditiveCoupling(mask,
                                           MLPConditioner(d_a, d_b, hidden_features, num_hidden_layers)))
        layers.append(DiagonalScaling((dim,)))
        base = StandardNormal((dim,)) if prior == "gaussian" else StandardLogistic((dim,))
        super().__init__(data_shape, [FlowSequence(layers)], [], base)


class MLPFlow(Flow):
    """A RealNVP-style stack of couplings on vectors (Dinh et al. 2017), each step being
    [normalisation] -> [invertible linear map] -> coupling as in a Glow step (Kingma & Dhariwal 2018).

    The coupling is affine (RealNVP) or a rational-quadratic spline on [-tail_bound, tail_bound] with identity
    tails (Durkan et al. 2019, "RQ-NSF (C)"); both start as the identity map with the default ``tanh`` scale.

    With ``permutation="alternate"`` consecutive couplings transform the even / odd features in turn (no
    linear map); with ``permutation="linear"`` an LU-parameterised invertible linear map (Glow's 1x1
    convolution on vectors) mixes the features before a coupling that always transforms the second half.
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"num_layers": 2, "hidden_features": 8}

    def __init__(
        self,
        data_shape: Sequence[int],
        num_layers: int = 8,
        hidden_features: int = 128,
        num_hidden_layers: int = 2,
        scale_fn: ScaleFn = "tanh",
        norm: Literal["actnorm", "batchnorm", "none"] = "actnorm",
        permutation: Literal["alternate", "linear"] = "alternate",
        coupling: Literal["affine", "spline"] = "affine",
        num_bins: int = 8,
        tail_bound: float = 3.0,
    ):
        """Build the stack.

        Args:
            data_shape: Shape of one sample, (D,) or (C, H, W) (flattened to D = C*H*W).
            num_layers: Number of coupling layers.
            hidden_features: Width of the conditioner MLPs.
            num_hidden_layers: Hidden layers per conditioner MLP.
            scale_fn: Affine coupling scale, ``tanh`` (RealNVP's code, identity at init), ``exp`` (unbounded,
                identity at init) or ``sigmoid`` (Glow's sigmoid(h + 2)); unused by spline couplings.
            norm: Layer before each coupling: ``actnorm`` (data-dependent init), ``batchnorm`` (RealNVP) or
                ``none``.
            permutation: ``alternate`` masks, or a learned ``linear`` map before each coupling.
            coupling: ``affine`` (RealNVP) or ``spline`` (rational-quadratic neural spline, Durkan et al.
                2019).
            num_bins: Spline bins K (``spline`` only).
            tail_bound: Spline interval [-B, B], identity outside (``spline`` only).
        """
        dim, layers = _flat_dim(data_shape)
        check_choice("norm", norm, {"actnorm", "batchnorm", "none"})
        check_choice("permutation", permutation, {"alternate", "linear"})
        check_choice("coupling", coupling, {"affine", "spline"})
        for i in range(num_layers):
            if norm == "actnorm":
                layers.append(ActNorm(dim))
            elif norm == "batchnorm":
                layers.append(BatchNormFlow(dim))
            if permutation == "linear":
                layers.append(InvertibleConv1x1(dim))
                mask = channel_mask(dim, 0, ndim=2)
            else:
                mask = alternating_mask(dim, i % 2)
            d_a, d_b = coupling_channels(mask, dim)
            if coupling == "affine":
                conditioner = MLPConditioner(d_a, 2 * d_b, hidden_features, num_hidden_layers)
                layers.append(AffineCoupling(mask, conditioner, scale_fn))
            else:
                out_features = SplineCoupling.params_per_element(num_bins) * d_b
                conditioner = MLPConditioner(d_a, out_features, hidden_features, num_hidden_layers)
                layers.append(SplineCoupling(mask, conditioner, num_bins, tail_bound))
        super().__init__(data_shape, [FlowSequence(layers)], [], StandardNormal((dim,)))


def _vector_dim(name: str, data_shape: Sequence[int]) -> int:
    """D of a vector data_shape (D,); planar and radial maps act on flat vectors only."""
    shape = tuple(data_shape)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{name} models vectors: data_shape must be (D,), got data_shape={shape}")
    return int(shape[0])


class PlanarFlow(Flow):
    """A stack of planar flows (Rezende & Mohamed 2015, Sec. 4.1) on a standard normal prior.

    A full density model: ``log_prob`` (maximum likelihood on data, each layer's data -> latent map being
    solved numerically), ``sample``, ``encode`` / ``decode``, and ``sample_with_log_prob`` for the
    variational use of the paper, e.g. minimising the reverse KL E_q[log q(x) + U(x)] to a target density
    proportional to exp(-U(x)) such as ``lit_gen.flows.energies.POTENTIALS`` (the paper's Fig. 3).
    """

    tiny_args = {"num_layers": 2}  # a seconds-long CPU version, for tests and smoke runs

    def __init__(self, data_shape: Sequence[int] = (2,), num_layers: int = 16):
        """Build the stack.

        Args:
            data_shape: Shape of one sample, (D,).
            num_layers: Number of planar transforms K.
        """
        dim = _vector_dim(type(self).__name__, data_shape)
        layers = FlowSequence([PlanarTransform(dim) for _ in range(num_layers)])
        super().__init__((dim,), [layers], [], StandardNormal((dim,)))


class RadialFlow(Flow):
    """A stack of radial flows (Rezende & Mohamed 2015, Sec. 4.1) on a standard normal prior; each layer
    inverts in closed form. Used like ``PlanarFlow``."""

    tiny_args = {"num_layers": 2}  # a seconds-long CPU version, for tests and smoke runs

    def __init__(self, data_shape: Sequence[int] = (2,), num_layers: int = 16):
        """Build the stack.

        Args:
            data_shape: Shape of one sample, (D,).
            num_layers: Number of radial transforms K.
        """
        dim = _vector_dim(type(self).__name__, data_shape)
        layers = FlowSequence([RadialTransform(dim) for _ in range(num_layers)])
        super().__init__((dim,), [layers], [], StandardNormal((dim,)))
