"""The Gaussian noise process of DDPM (Ho et al. 2020), shared by every diffusion method and sampler.

All coefficients are computed in float64 and kept as float64 buffers; they are cast to the
dtype of ``x`` when gathered, so mixed precision never degrades the schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lit_gen.diffusion.schedules import make_betas
from lit_gen.likelihood import (
    LOG2,
    discretized_gaussian_log_likelihood,
    mean_over_dims,
    normal_kl,
)
from lit_gen.process.prediction import OutputLayout, make_prediction
from lit_gen.process.sde import DiscreteVPSDE
from lit_gen.utils import append_dims


def _alpha_sigma(alpha_bar_t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(abar) and sqrt(1 - abar) of alpha_bar_t (B,), broadcastable against x and in its dtype."""
    abar = append_dims(alpha_bar_t.to(x.dtype), x.ndim)
    return abar.sqrt(), (1 - abar).sqrt()


def eps_x0_from_output(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0) from a model output given alpha_bar_t (B,): x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    (Ho et al. 2020, Eq. 4)."""
    return make_prediction(prediction_type).to_eps_x0(model_output, x_t, *_alpha_sigma(alpha_bar_t, x_t))


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the network regresses for a given parameterisation."""
    return make_prediction(prediction_type).target(x0, eps, *_alpha_sigma(alpha_bar_t, x0))


class GaussianDiffusion(nn.Module):
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the model's reverse Gaussians and the
    variational bound.

    Args:
        schedule: beta schedule name, ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021).
        num_timesteps: number of diffusion steps T.
        betas: explicit betas (T,) instead of a named schedule (used for respacing).
        beta_start: beta_1 of the linear schedules.
        beta_end: beta_T of the linear schedules.
    """

    def __init__(self, schedule: str = "linear", num_timesteps: int = 1000,
                 betas: torch.Tensor | None = None, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if betas is None:
            betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        betas = betas.to(torch.float64)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        # Ho et al. 2020, Eq. 7: beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        self.num_timesteps = len(betas)
        self.schedule = schedule
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.register_buffer("alpha_bar_prev", alpha_bar_prev, persistent=False)
        self.register_buffer("posterior_variance", posterior_variance, persistent=False)
        # beta_tilde_0 = 0: clip the log at t = 0 to beta_tilde_1 (Nichol & Dhariwal 2021, Sec. 3.1)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if len(betas) > 1 else betas
        self.register_buffer("posterior_log_variance_clipped", torch.log(clipped), persistent=False)
        # Ho et al. 2020, Eq. 7: mu_tilde = c1 x0 + c2 x_t
        self.register_buffer("posterior_mean_coef1", betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
                             persistent=False)
        self.register_buffer(
            "posterior_mean_coef2", (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar), persistent=False
        )

    @property
    def sde(self) -> DiscreteVPSDE:
        """This process in continuous time (step n at t = (n + 1) / T), for the model function, guidance and
        the solvers of lit_gen.score."""
        return DiscreteVPSDE(self.alpha_bar)

    def respaced(self, timesteps: torch.Tensor) -> GaussianDiffusion:
        """The process restricted to ``timesteps`` (ascending), betas recomputed from alpha_bar:
        beta_k = 1 - abar_{t_k} / abar_{t_{k-1}} (Nichol & Dhariwal 2021, Sec. 4)."""
        alpha_bar = self.alpha_bar[timesteps]
        prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        return GaussianDiffusion(self.schedule, len(timesteps),
                                 betas=1 - alpha_bar / prev).to(alpha_bar.device)

    @staticmethod
    def _at(buffer: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """buffer[t] cast to x's dtype and broadcastable against x."""
        return append_dims(buffer[t].to(x.dtype), x.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4)."""
        abar = self._at(self.alpha_bar, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al. 2020, Eqs. 6-7)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t,
                                                                           x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped,
                                                                         t, x_t)

    def split_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from a network output at integer steps t (B,)."""
        return eps_x0_from_output(model_output, x_t, self.alpha_bar[t], prediction_type)

    def model_log_variance(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor | None,
                           variance: str) -> torch.Tensor:
        """log Sigma_theta(x_t, t): ``learned`` interpolates log beta and log beta_tilde with v in [-1, 1]
        (Nichol & Dhariwal 2021, Eq. 15); ``small`` is beta_tilde, ``large`` is beta (Ho et al. 2020, Sec.
        3.2)."""
        min_log = self._at(self.posterior_log_variance_clipped, t, x)
        # for "large", t = 0 uses beta_tilde_1 as in improved-diffusion, so the decoder is well defined
        large = self.betas if self.num_timesteps == 1 else torch.cat([self.posterior_variance[1:2],
                                                                      self.betas[1:]])
        max_log = self._at(large.log(), t, x)
        if variance == "learned":
            frac = (v + 1) / 2
            return frac * self._at(self.betas.log(), t, x) + (1 - frac) * min_log
        if variance == "small":
            return min_log
        if variance == "large":
            return max_log
        raise ValueError(f"variance={variance!r} is not supported; choose one of "
                         f"['large', 'learned', 'small']")

    def p_mean_logvar(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        prediction_type: str,
        variance: str,
        clip_denoised: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p_theta(x_{t-1} | x_t), and the predicted x0. With a learned variance
        the output has 2C channels: the prediction, then v."""
        model_output, v = OutputLayout(prediction_type, variance == "learned").split(model_output)
        _, x0 = self.split_output(model_output, x_t, t, prediction_type)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, self.model_log_variance(t, x_t, v, variance), x0

    # --- the variational bound, in bits per dimension --------------------------------------------------
    def vlb_term(
        self, mean: torch.Tensor, log_var: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """L_{t-1} per sample (B,) in bits/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
        decoder NLL L_0 = -log p(x0 | x_1) on 8-bit bins for t = 0 (Ho et al. 2020, Eq. 5)."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        kl = mean_over_dims(normal_kl(true_mean, true_log_var, mean, log_var)) / LOG2
        decoder_nll = -mean_over_dims(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / LOG2
        return torch.where(t == 0, decoder_nll, kl)

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) || N(0, I)) per sample (B,) in bits/dim."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        abar = self._at(self.alpha_bar, t, x0)
        kl = normal_kl(abar.sqrt() * x0, (1 - abar).log(), torch.zeros_like(x0), torch.zeros_like(x0))
        return mean_over_dims(kl) / LOG2

    @torch.no_grad()
    def nll_bpd(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        prediction_type: str,
        variance: str,
        generator: torch.Generator | None = None,
        num_timesteps: int | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The bound L_T + sum_{t>=1} L_{t-1} + L_0 per sample (B,), in bits/dim, with its parts ``prior``,
        ``kl`` (t >= 1) and ``decoder`` (t = 0). By default every term (T forward passes). With
        ``num_timesteps`` K, the unbiased estimate L_T + L_0 + (T - 1) mean_k L_{t_k} from K steps t_k ~ U{1,
        ..., T-1} per sample (K + 1 passes), plus ``var``: the variance of that estimate over the draw of t
        (from the K terms; needs K >= 2)."""
        from tqdm.auto import tqdm

        from lit_gen.utils import randn

        B, T = x0.shape[0], self.num_timesteps
        if num_timesteps is not None and not 2 <= num_timesteps:
            raise ValueError(f"num_timesteps={num_timesteps}: the estimate needs at least 2 random steps per "
                             f"sample")

        def term(t: torch.Tensor) -> torch.Tensor:
            x_t = self.q_sample(x0, t, randn(x0.shape, generator, x0.device, x0.dtype))
            mean, log_var, _ = self.p_mean_logvar(model_fn(x_t, t), x_t, t, prediction_type, variance, True)
            return self.vlb_term(mean, log_var, x0, x_t, t).double()

        steps = range(T) if num_timesteps is None else range(num_timesteps + 1)
        terms = []
        for k in tqdm(steps, desc="bound over t", disable=not progress, leave=False):
            if num_timesteps is None or k == 0:  # every step; or L_0 first
                t = torch.full((B,), k, device=x0.device, dtype=torch.long)
            else:  # t ~ U{1, ..., T-1}, one per sample
                t = torch.randint(1, T, (B,), device=x0.device, generator=generator)
            terms.append(term(t))
        decoder, rest = terms[0], torch.stack(terms[1:]) if T > 1 else terms[0].new_zeros(1, B)
        prior = self.prior_bpd(x0).double()
        out = {"prior": prior, "decoder": decoder}
        if num_timesteps is None:
            out["kl"] = rest.sum(0)
        else:
            out["kl"] = (T - 1) * rest.mean(0)
            out["var"] = (T - 1) ** 2 * rest.var(0) / num_timesteps  # of the mean of K draws
        out["bpd"] = prior + out["kl"] + decoder
        return out

    def sample_timesteps(self, batch_size: int, device: torch.device,
                         generator: torch.Generator | None = None):
        """t ~ U{0, ..., T-1} (Ho et al. 2020, Algorithm 1)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
