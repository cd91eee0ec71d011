"""Pure-torch normalizing flows (no Lightning imports): invertible layers, base distributions, planar and
radial flows, affine/additive/rational-quadratic spline couplings, NICE, RealNVP and Glow, dequantisation and
bits/dim.

Layers follow one contract (``FlowLayer``): ``forward(x) -> (z, log|det dz/dx|)`` and
``inverse(z) -> (x, log|det dx/dz|)``, log-dets of shape (B,). Models (``Flow`` subclasses) expose
``log_prob(x) -> (B,)`` in nats and ``sample(n, generator=None, temperature=1.0)``.
"""

from lit_gen.flows.conditioners import GlowConditioner, MLPConditioner, ResNetConditioner, ZeroConv2d
from lit_gen.flows.core import FlowLayer, FlowSequence, sum_except_batch
from lit_gen.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    coupling_channels,
)
from lit_gen.flows.distributions import (
    ConditionalGaussian,
    DiagonalGaussian,
    StandardLogistic,
    StandardNormal,
    gaussian_log_prob,
)
from lit_gen.flows.energies import POTENTIALS
from lit_gen.flows.flow import Flow, Split
from lit_gen.flows.image import Glow, RealNVP
from lit_gen.flows.layers import (
    ActNorm,
    BatchNormFlow,
    DiagonalScaling,
    Flatten,
    InvertibleConv1x1,
    Permutation,
    Squeeze,
)
from lit_gen.flows.planar import PlanarTransform, RadialTransform
from lit_gen.flows.preprocess import (
    bits_per_dim,
    dequantize,
    logit_inverse,
    logit_transform,
    postprocess,
    preprocess,
)
from lit_gen.flows.spline import SplineCoupling, rational_quadratic_spline
from lit_gen.flows.vector import NICE, MLPFlow, PlanarFlow, RadialFlow

__all__ = [
    "NICE",
    "POTENTIALS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNormFlow",
    "ConditionalGaussian",
    "DiagonalGaussian",
    "DiagonalScaling",
    "Flatten",
    "Flow",
    "FlowLayer",
    "FlowSequence",
    "Glow",
    "GlowConditioner",
    "InvertibleConv1x1",
    "MLPConditioner",
    "MLPFlow",
    "Permutation",
    "PlanarFlow",
    "PlanarTransform",
    "RadialFlow",
    "RadialTransform",
    "RealNVP",
    "ResNetConditioner",
    "SplineCoupling",
    "Split",
    "Squeeze",
    "StandardLogistic",
    "StandardNormal",
    "ZeroConv2d",
    "alternating_mask",
    "bits_per_dim",
    "channel_mask",
    "checkerboard_mask",
    "coupling_channels",
    "dequantize",
    "gaussian_log_prob",
    "logit_inverse",
    "logit_transform",
    "postprocess",
    "preprocess",
    "rational_quadratic_spline",
    "sum_except_batch",
]
