"""Training objectives of the Gaussian diffusion: L_simple (Ho et al. 2020, Eq. 14), the hybrid loss and
L_vlb (Nichol & Dhariwal 2021, Eq. 16)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_gen.diffusion.gaussian import GaussianDiffusion, training_target
from lit_gen.likelihood import mean_over_dims
from lit_gen.process.prediction import OutputLayout


def diffusion_loss_terms(
    diffusion: GaussianDiffusion,
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    prediction_type: str,
    variance: str,
    loss_type: str,
    vlb_weight: float = 0.001,
) -> dict[str, torch.Tensor]:
    """Per-sample terms (B,) at steps t with noise eps: ``mse`` = ||target - f(x_t, t)||^2, ``vlb`` =
    T * L_{t-1} in bits/dim (an estimate of the whole bound), and ``loss``: mse (``simple``),
    mse + vlb_weight * vlb with the mean frozen inside vlb (``hybrid``), or vlb alone (``vlb``)."""
    x_t = diffusion.q_sample(x0, t, eps)
    out = denoise_fn(x_t, t)  # (B, C or 2C, ...)
    learned = variance == "learned"
    pred, var = OutputLayout(prediction_type, learned).split(out)
    target = training_target(x0, eps, diffusion.alpha_bar[t], prediction_type)
    terms = {"mse": mean_over_dims((pred - target) ** 2)}
    terms["loss"] = terms["mse"]
    if loss_type == "simple":
        return terms
    out_vlb = out
    if loss_type == "hybrid":  # the mean is frozen inside L_vlb: it trains only the variance (Eq. 16)
        out_vlb = torch.cat([pred.detach(), var], 1) if learned else out.detach()
    mean, log_var, _ = diffusion.p_mean_logvar(out_vlb, x_t, t, prediction_type, variance)
    terms["vlb"] = diffusion.num_timesteps * diffusion.vlb_term(mean, log_var, x0, x_t, t)
    terms["loss"] = terms["vlb"] if loss_type == "vlb" else terms["mse"] + vlb_weight * terms["vlb"]
    return terms
