"""Flows on vectors (B, D), e.g. 2-D toy data: NICE, a RealNVP/Glow-style coupling stack with an MLP
conditioner, and stacks of planar or radial flows. NICE and MLPFlow also take images (C, H, W), which they
model as flat vectors of D = C*H*W features (NICE's own setting on MNIST)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lit_gen.flows.conditioners import MLPConditioner
from lit_gen.flows.core import FlowLayer, FlowSequence
from lit_gen.flows.coupling import AdditiveCoupling, AffineCoupling, ScaleFn, alternating_mask, channel_mask
from lit_gen.flows.distributions import StandardLogistic, StandardNormal
from lit_gen.flows.flow import Flow
from lit_gen.flows.layers import ActNorm, BatchNormFlow, DiagonalScaling, Flatten, InvertibleConv1x1
from lit_gen.flows.planar import PlanarTransform, RadialTransform
from lit_gen.utils import Generator, check_choice


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
        layers += [
            AdditiveCoupling(
                alternating_mask(dim, i % 2), MLPConditioner(dim, dim, hidden_features, num_hidden_layers)
            )
            for i in range(num_coupling_layers)
        ]
        layers.append(DiagonalScaling((dim,)))
        base = StandardNormal((dim,)) if prior == "gaussian" else StandardLogistic((dim,))
        super().__init__(data_shape, [FlowSequence(layers)], [], base)


class MLPFlow(Flow):
    """A RealNVP-style stack of affine couplings on vectors (Dinh et al. 2017), each step being
    [normalisation] -> [invertible linear map] -> affine coupling as in a Glow step (Kingma & Dhariwal 2018).

    With ``permutation="alternate"`` consecutive couplings transform the even / odd features in turn (no
    linear map); with ``permutation="linear"`` an LU-parameterised invertible linear map (Glow's 1x1
    convolution on vectors) mixes the features before a coupling that always transforms the second half.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_layers: int = 8,
        hidden_features: int = 128,
        num_hidden_layers: int = 2,
        scale_fn: ScaleFn = "tanh",
        norm: Literal["actnorm", "batchnorm", "none"] = "actnorm",
        permutation: Literal["alternate", "linear"] = "alternate",
    ):
        """Build the stack.

        Args:
            data_shape: Shape of one sample, (D,) or (C, H, W) (flattened to D = C*H*W).
            num_layers: Number of affine coupling layers.
            hidden_features: Width of the conditioner MLPs.
            num_hidden_layers: Hidden layers per conditioner MLP.
            scale_fn: Coupling scale, ``tanh`` (RealNVP, identity at init) or ``sigmoid`` (Glow's
                sigmoid(h + 2)).
            norm: Layer before each coupling: ``actnorm`` (data-dependent init), ``batchnorm`` (RealNVP) or
                ``none``.
            permutation: ``alternate`` masks, or a learned ``linear`` map before each coupling.
        """
        dim, layers = _flat_dim(data_shape)
        check_choice("norm", norm, {"actnorm", "batchnorm", "none"})
        check_choice("permutation", permutation, {"alternate", "linear"})
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
            conditioner = MLPConditioner(dim, 2 * dim, hidden_features, num_hidden_layers)
            layers.append(AffineCoupling(mask, conditioner, scale_fn))
        super().__init__(data_shape, [FlowSequence(layers)], [], StandardNormal((dim,)))


class _GenerativeOnlyFlow(nn.Module):
    """x = f_K(... f_1(z_0)), z_0 ~ N(0, I), for transforms that only run latent -> data (Rezende & Mohamed
    2015, Sec. 3.1): samples come with their exact log-density, but the density of a given x is unavailable."""

    def __init__(self, dim: int, layers: list[FlowLayer]):
        super().__init__()
        self.data_shape = (dim,)
        self.flow = FlowSequence(layers)  # applied with .inverse (latent -> data)
        self.prior = StandardNormal((dim,))

    @property
    def num_dims(self) -> int:
        return self.data_shape[0]

    def sample_with_log_prob(self, n: int, generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x (n, D) and log q(x) (n,) = log q_0(z_0) - sum_k log|det df_k/dz_{k-1}| in nats."""
        z_0 = self.prior.sample(n, generator)
        x, log_det = self.flow.inverse(z_0)  # log_det = log|det dx/dz_0|
        return x, self.prior.log_prob(z_0) - log_det

    def sample(self, n: int, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        """Draw n samples (n, D); ``temperature`` multiplies the std of the base N(0, I)."""
        return self.flow.inverse(self.prior.sample(n, generator, temperature))[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} cannot evaluate log p(x) of given data (no inverse); "
            "use sample_with_log_prob"
        )


class PlanarFlow(_GenerativeOnlyFlow):
    """A stack of planar flows (Rezende & Mohamed 2015, Sec. 4.1) from a standard normal.

    Fit it by minimising the reverse KL E_q[log q(x) + U(x)] to a target density proportional to
    exp(-U(x)), e.g. ``lit_gen.flows.energies.POTENTIALS`` (the paper's Fig. 3); see ``sample_with_log_prob``.
    """

    def __init__(self, dim: int = 2, num_layers: int = 16):
        """Build the stack.

        Args:
            dim: Dimension D of the vectors.
            num_layers: Number of planar transforms K.
        """
        super().__init__(dim, [PlanarTransform(dim) for _ in range(num_layers)])


class RadialFlow(_GenerativeOnlyFlow):
    """A stack of radial flows (Rezende & Mohamed 2015, Sec. 4.1) from a standard normal; trained like
    ``PlanarFlow``."""

    def __init__(self, dim: int = 2, num_layers: int = 16):
        """Build the stack.

        Args:
            dim: Dimension D of the vectors.
            num_layers: Number of radial transforms K.
        """
        super().__init__(dim, [RadialTransform(dim) for _ in range(num_layers)])
