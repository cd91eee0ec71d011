"""Device and dtype placement that CI's CPU cannot show directly: tensors built beside a module's tables must
follow the tables' device (checked on the meta device), and sample grids must run on half-precision
weights."""

import pytest
import torch
from torch import nn

from lit_gen.callbacks.periodic import weights_autocast
from lit_gen.diffusion.gaussian import GaussianDiffusion


def test_diffusion_tables_stay_on_the_device_of_their_betas():
    betas = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64, device="meta")
    process = GaussianDiffusion(betas=betas)  # a CPU tensor among them raises: devices differ
    assert process.alpha_bar_prev.device.type == "meta"
    assert process.respaced(torch.arange(0, 10, 3, device="meta")).alpha_bar.device.type == "meta"


def test_grid_runs_on_half_precision_weights():
    net = nn.Linear(4, 3).to(torch.bfloat16)  # as DeepSpeed's bf16 leaves the weights
    noise = torch.randn(2, 4)
    with pytest.raises(RuntimeError):
        net(noise)
    with weights_autocast(net):
        assert net(noise).dtype == torch.bfloat16


def test_no_autocast_for_float32_weights():
    net = nn.Linear(4, 3)
    with weights_autocast(net):
        assert net(torch.randn(2, 4)).dtype == torch.float32
