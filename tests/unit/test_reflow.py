"""Reflow against closed forms: Liu et al.'s straightness S on Euler paths equals its integral computed
directly (and is 0 for straight paths); the pairs that ``lit-gen reflow`` draws with the exact 1-rectified
flow between Gaussians are the affine map x0 = mu + s x1; the 2-rectified flow fitted on them (least squares:
its velocity is affine in x_t) is straight, so one Euler step lands on the ODE's endpoint; a DDPM's velocity
on its own path; the pairs file, the DataModule and the method's one-line errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lit_gen.data.pairs import PairsDataModule, read_pairs, write_pairs
from lit_gen.methods import FlowMatching
from lit_gen.process import LinearPath
from lit_gen.process.couplings import sample_times
from lit_gen.process.velocity import straightness
from lit_gen.reflow import draw_pairs
from tests.unit.test_flow_matching import MU, S, gaussian_velocity

F64 = torch.float64


class ExactVelocity(nn.Module):
    """The marginal velocity of the linear path for x0 ~ N(MU, S^2 I) as a network (it sees 999 t)."""

    def forward(self, x, model_time, y=None):
        return gaussian_velocity(x.double(), model_time.double() / 999).to(x.dtype)


def exact_teacher() -> FlowMatching:
    return FlowMatching(data_shape=(2,), net=lambda shape, classes, channels: ExactVelocity(), ema_decay=0.0)


def test_straightness_is_the_integral_of_the_deviation_from_the_straight_line():
    """A curved flow dx/dt = A(t) x: S from the two running sums equals sum_k dt_k mean||(x_1 - x_0) - v_k||^2
    from the stored velocities; a constant velocity gives 0."""
    x1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    times = torch.linspace(1, 0, 17, dtype=F64) ** 1.5
    drift = lambda x, t: torch.stack([x[:, 1] * t, -x[:, 0], x[:, 2] * t**2], 1)  # noqa: E731
    s, x_end = straightness(drift, x1, times)
    x, velocities = x1, []
    for t, u in zip(times[:-1], times[1:], strict=True):
        velocities.append(drift(x, t.expand(5)))
        x = x - (t - u) * velocities[-1]
    direct = sum((t - u) * ((x1 - x) - v).pow(2).mean(1)
                 for t, u, v in zip(times[:-1], times[1:], velocities, strict=True))
    torch.testing.assert_close(x_end, x, rtol=0, atol=1e-8)
    torch.testing.assert_close(s, direct, rtol=1e-8, atol=1e-8)
    assert (s > 1e-3).all()
    constant = straightness(lambda x, t: torch.ones_like(x), x1, times)[0]
    torch.testing.assert_close(constant, torch.zeros(5, dtype=F64), rtol=0, atol=1e-8)


def test_the_pairs_of_the_exact_1_rectified_flow_are_the_affine_map():
    """draw_pairs with RK45 on the exact field between N(0, I) and N(MU, S^2 I): x0 = MU + S x1 (the flow of
    an isotropic Gaussian path is affine), and pair i depends on (seed, i) only."""
    teacher, cfg = exact_teacher(), SimpleNamespace(seed=3, labels=None)
    options = teacher.deterministic_options({"sampler": "ode", "rtol": 1e-7, "atol": 1e-7})
    pairs = draw_pairs(teacher, cfg, options, list(range(64)))
    assert pairs["labels"] is None
    expected = MU.float() + S * pairs["noise"]
    torch.testing.assert_close(pairs["x"], expected, rtol=0, atol=1e-4)
    again = draw_pairs(teacher, cfg, options, list(range(60, 64)))
    torch.testing.assert_close(again["noise"], pairs["noise"][60:], rtol=0, atol=0)


def fitted_2_rectified_velocity(x1: torch.Tensor, x0: torch.Tensor, times: torch.Tensor):
    """The 2-rectified flow of the pairs: E[x1 - x0 | x_t] by least squares at each time of ``times`` (it is
    affine in x_t: the pairs are an affine map); returns a drift(x, t) for those times."""
    fits = {}
    for t in times[:-1].tolist():
        x_t = (1 - t) * x0 + t * x1
        design = torch.cat([x_t, torch.ones(len(x_t), 1, dtype=F64)], 1)
        fits[t] = torch.linalg.lstsq(design, x1 - x0).solution

    def drift(x, t):
        return torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1) @ fits[float(t[0])]

    return drift


def test_a_2_rectified_flow_of_the_exact_1_rectified_flow_is_straight():
    teacher = exact_teacher()
    options = teacher.deterministic_options({"sampler": "ode", "rtol": 1e-7, "atol": 1e-7})
    pairs = draw_pairs(teacher, SimpleNamespace(seed=0, labels=None), options, list(range(2000)))
    x1, x0 = pairs["noise"].double(), pairs["x"].double()
    times = LinearPath().time_grid(9)
    s_teacher = straightness(lambda x, t: gaussian_velocity(x, t), x1, times)[0].mean()
    drift = fitted_2_rectified_velocity(x1, x0, times)
    s_student, _ = straightness(drift, x1, times)
    one_step = x1 - drift(x1, torch.ones(len(x1), dtype=F64))  # Euler, t = 1 -> 0 in one step
    assert s_teacher > 0.05  # the 1-rectified flow between these Gaussians curves
    assert s_student.mean() < 1e-8
    torch.testing.assert_close(one_step, x0, rtol=0, atol=1e-4)


def test_the_method_reports_straightness_on_32_euler_steps_of_its_own_field():
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    expected = straightness(lambda x, t: gaussian_velocity(x, t), x1, LinearPath().time_grid(33))[0]
    torch.testing.assert_close(exact_teacher().straightness(x1), expected, rtol=1e-8, atol=1e-8)


def test_the_method_trains_on_paired_noise_and_one_step_at_t_1():
    """With the batch's noise the loss uses it, with the times drawn first from the generator; one_step puts
    every time at 1."""
    torch.testing.assert_close(sample_times(4, "one_step"), torch.ones(4, dtype=F64), rtol=0, atol=0)
    x1 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    x0 = MU + S * x1
    for distribution in ("uniform", "one_step"):
        model = FlowMatching(data_shape=(2,), net=lambda s, c, ch: ExactVelocity(), ema_decay=0.0,
                             time_distribution=distribution)
        loss = model.loss(model.net, x0, torch.Generator().manual_seed(2), noise=x1)
        t = sample_times(8, distribution, torch.Generator().manual_seed(2))[:, None]
        expected = (gaussian_velocity((1 - t) * x0 + t * x1, t[:, 0]) - (x1 - x0)).pow(2).mean(1).mean()
        torch.testing.assert_close(loss, expected, rtol=1e-8, atol=1e-8)


def test_one_line_errors_for_settings_that_cannot_use_pairs(tmp_path):
    batch, net = {"x": torch.zeros(4, 2)}, (lambda s, c, ch: ExactVelocity())
    with pytest.raises(ValueError, match="one_step.*lit-gen reflow"):
        FlowMatching(data_shape=(2,), net=net, time_distribution="one_step").training_step(batch, 0)
    with pytest.raises(ValueError, match="coupling='ot'.*independent"):
        FlowMatching(data_shape=(2,), net=net, coupling="ot").training_step({**batch, "noise": batch["x"]}, 0)
    with pytest.raises(ValueError, match="one_step.*only on the linear path; path='cosine'"):
        FlowMatching(data_shape=(2,), net=net, time_distribution="one_step", path="cosine")
    with pytest.raises(FileNotFoundError, match="pairs file not found.*lit-gen reflow"):
        read_pairs(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", arr_0=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"not a pairs file.*\['x0', 'noise'\]"):
        read_pairs(tmp_path / "other.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    for name in ("array.npy", "corrupt.npz"):
        with pytest.raises(ValueError, match=f"{name}' is not a pairs file of lit-gen reflow"):
            read_pairs(tmp_path / name)
    write_pairs(tmp_path / "labels.npz", torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0, 1, 5]),
                num_classes=3)
    with pytest.raises(ValueError, match="labels 0 to 5 do not fit its num_classes=3"):
        read_pairs(tmp_path / "labels.npz")


def test_the_pairs_data_module_reads_shape_classes_and_items(tmp_path):
    noise = torch.randn(50, 1, 4, 4)
    write_pairs(tmp_path / "pairs.npz", noise * 0.5, noise, torch.arange(50) % 3, num_classes=3, teacher="t",
                sampler="euler", steps=5)
    data = PairsDataModule(path=str(tmp_path / "pairs.npz"), batch_size=10, val_fraction=0.1,
                           test_fraction=0.1)
    assert data.data_shape == (1, 4, 4) and data.num_classes == 3
    data.setup("fit")
    assert len(data.train_dataset) == 40 and len(data.val_dataset) == len(data.test_dataset) == 5
    item = data.train_dataset[0]
    torch.testing.assert_close(item["x"], 0.5 * item["noise"], rtol=0, atol=0)
    assert int(item["y"]) in (0, 1, 2)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_a_ddpm_checkpoint_gives_the_velocity_field_of_its_own_path(prediction_type):
    """velocity(x, t) of a DDPM = alpha'(t) x0_hat + sigma'(t) eps_hat, with the derivatives of its discrete
    process in continuous t by central differences (float64) and (x0_hat, eps_hat) from its network's raw
    output at the model's time."""
    from lit_gen.methods import DDPM
    from lit_gen.nets import MLPDenoiser

    torch.manual_seed(0)
    model = DDPM(data_shape=(2,), net=MLPDenoiser, prediction_type=prediction_type, ema_decay=0.0)
    model.configure_model()
    model.double()
    x = torch.randn(6, 2, dtype=F64)
    t = torch.tensor([0.0505, 0.2003, 0.3504, 0.5002, 0.7506, 0.9001], dtype=F64)  # inside segments of 1/N
    sde = model.noise_model(model.net).sde
    h = 1e-7
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    d_alpha = ((sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h))[:, None]
    d_sigma = ((sde.sigma(t + h) - sde.sigma(t - h)) / (2 * h))[:, None]
    out = model.net(x, sde.N * t - 1, None)  # DDPM's step n of t = (n + 1) / N
    if prediction_type == "eps":
        eps = out
        x0 = (x - sigma * eps) / alpha
    else:  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
        x0, eps = alpha * x - sigma * out, sigma * x + alpha * out
    torch.testing.assert_close(model.velocity(x, t), d_alpha * x0 + d_sigma * eps, rtol=1e-6, atol=1e-8)
