"""Method-level pieces without a Trainer: EMA, the LR schedule, the DDPM loss and sample()."""

from functools import partial

import pytest
import torch
from torch import nn

from lit_gen.methods import DDPM
from lit_gen.nets import MLPDenoiser, UNet
from lit_gen.nets.ema import EMA
from lit_gen.optim import WarmupCosineLR
from lit_gen.utils import sample_generators


def test_ema_update_is_an_exponential_average():
    net = nn.Linear(3, 2)
    ema = EMA(net, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for e, s, p in zip(ema.module.parameters(), start, net.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p)
    assert int(ema.num_updates) == 1 and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_of_half_precision_weights_averages_in_fp32():
    """DeepSpeed in bf16 casts the average's weights too. 2,000 updates at d = 0.999 towards a target 1.0
    away: in bf16 each step of 1e-3 of the difference rounds away; the fp32 average beside it follows the
    closed form 1 - d^n to bf16 rounding, and survives a state_dict round trip."""
    torch.manual_seed(0)
    net = nn.Linear(8, 8).to(torch.bfloat16)
    ema = EMA(net, decay=0.999, warmup=False)
    start = [p.detach().double() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    target = [p.detach().double() for p in net.parameters()]
    naive = [p.detach().clone() for p in ema.module.parameters()]
    for n in range(1, 2001):
        ema.update(net)
        # what bf16 alone gives
        torch._foreach_lerp_(naive, [p.detach() for p in net.parameters()], 1 - 0.999)
        if n == 1000:
            ema.load_state_dict(ema.state_dict())  # resumes from the rounded average: one more rounding, once
    # the closed form of 2,000 updates
    exact = [t + 0.999**2000 * (s - t) for s, t in zip(start, target, strict=True)]
    for e, x, b in zip(ema.module.parameters(), exact, naive, strict=True):
        assert e.dtype == torch.bfloat16
        # bf16 rounding of values up to ~2 (ulp 2^-7), plus the resume
        assert (e.double() - x).abs().max() <= 2e-2
        assert (b.double() - x).abs().max() > 0.5  # bf16 alone is stuck far from it


def test_ema_of_half_precision_weights_restarts_from_a_loaded_average():
    """Loading a state dict replaces the fp32 average too: the next update starts from the loaded values."""
    net = nn.Linear(4, 4).to(torch.bfloat16)
    ema = EMA(net, decay=0.5, warmup=False)
    ema.update(net)  # makes the fp32 average
    other = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in other.module.parameters():
            p.fill_(3.0)
    ema.load_state_dict(other.state_dict())
    ema.update(net)
    for e, p in zip(ema.module.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(e, (0.5 * 3.0 + 0.5 * p.float()).to(torch.bfloat16), rtol=0, atol=0)


def test_ema_warmup_and_bad_decay():
    ema = EMA(nn.Linear(1, 1), decay=0.9999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates.fill_(10_000_000)
    assert ema.current_decay() == pytest.approx(0.9999)
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        EMA(nn.Linear(1, 1), decay=1.5)


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lrs[12] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)


def tiny_ddpm(**kwargs) -> DDPM:
    net = kwargs.pop("net", partial(UNet, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                    attention_resolutions=()))
    return DDPM(data_shape=kwargs.pop("data_shape", (1, 8, 8)), num_classes=kwargs.pop("num_classes", 0),
                net=net,
                num_timesteps=20, **kwargs)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_ddpm_loss_is_l_simple(prediction_type):
    torch.manual_seed(0)
    model = tiny_ddpm(prediction_type=prediction_type)
    # the UNet's output convolution starts at zero: give it weights, so x_t and t matter
    with torch.no_grad():
        for p in model.net.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = model.loss(model.net, {"x": x0}, g1)
    t = torch.randint(0, 20, (4,), generator=g2)
    eps = torch.randn(x0.shape, generator=g2)
    abar = model.diffusion.alpha_bar[t].float()[:, None, None, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    target = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction_type]
    torch.testing.assert_close(loss, ((model.net(x_t, t) - target) ** 2).mean())
    # the oracle can tell: the net's output depends on x_t and on t
    assert not torch.allclose(model.net(x_t, t), model.net(x0, t)) and not torch.allclose(model.net(x_t, t),
                                                                                          model.net(x_t,
                                                                                                    t.flip(0)))


def test_ddpm_sample_shapes_labels_and_options():
    model = tiny_ddpm(num_classes=3, class_conditional=True)
    out = model.sample(5, sample_generators(0, 0, 5), trajectory_points=4, sampler="ddim", steps=5)
    assert out.x.shape == (5, 1, 8, 8) and out.labels.tolist() == [0, 1, 2, 0, 1]
    assert len(out.trajectory) == 4 and out.trajectory[0].shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=0.7)
    with pytest.raises(ValueError, match="eta"):
        model.sample(2, sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny_ddpm(class_conditional=True)


def test_ddpm_on_vectors_with_mlp():
    model = tiny_ddpm(data_shape=(2,), net=partial(MLPDenoiser, hidden_dim=16, num_layers=2),
                      clip_denoised=False)
    assert model.loss(model.net, {"x": torch.randn(8, 2)}).ndim == 0
    assert model.sample(3, steps=4).x.shape == (3, 2)


class _FixedOutput(nn.Module):
    """A 'network' whose output is a leaf tensor, to read gradients per output channel."""

    def __init__(self, data_shape, num_classes, out_channels):
        super().__init__()
        self.out = nn.Parameter(torch.randn(4, out_channels, *data_shape[1:]) * 0.1)

    def forward(self, x, t, y=None):
        return self.out


@pytest.mark.parametrize("loss_type", ["hybrid", "vlb"])
def test_hybrid_loss_freezes_the_mean_inside_l_vlb(loss_type):
    model = tiny_ddpm(net=_FixedOutput, variance="learned", loss_type=loss_type)
    terms = model.loss_terms(model.net, {"x": torch.rand(4, 1, 8, 8) * 2 - 1},
                             torch.Generator().manual_seed(0))
    terms["vlb"].sum().backward()
    grad_mean, grad_v = model.net.out.grad.chunk(2, dim=1)
    assert grad_v.abs().sum() > 0
    assert (grad_mean.abs().sum() == 0) == (loss_type == "hybrid")  # Nichol & Dhariwal 2021, Eq. 16


def test_learned_variance_needs_the_bound():
    with pytest.raises(ValueError, match="hybrid"):
        tiny_ddpm(variance="learned", loss_type="simple")
