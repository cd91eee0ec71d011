"""Unit tests for lit_gen.nets: shapes, conditioning, DDPM parameter count, checkpointing, a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from lit_gen.nets import MLPDenoiser, UNet, timestep_embedding


def _tiny_unet(data_shape=(1, 8, 8), num_classes=0, **kwargs) -> UNet:
    hparams = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,))
    hparams.update(kwargs)
    return UNet(data_shape, num_classes, **hparams)


def _randomize_zero_init(net: torch.nn.Module) -> None:
    """Zero-initialised output layers make the net output 0 for every t; give them random weights."""
    with torch.no_grad():
        for p in net.parameters():
            if torch.all(p == 0):
                p.normal_(std=0.1)


# ----------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dim", [1, 7, 8, 33])
def test_timestep_embedding_shape_finite_and_distinct(dim):
    t = torch.tensor([0.0, 1.0, 10.0, 999.0])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    assert torch.isfinite(emb).all()
    if dim >= 2:
        # different t -> different embedding (pairwise)
        assert torch.cdist(emb, emb).add(torch.eye(4)).min() > 1e-3
    if dim % 2 == 1:
        assert torch.all(emb[:, -1] == 0)  # zero pad column


def test_timestep_embedding_values_and_int_input():
    emb = timestep_embedding(torch.tensor([0, 3]), 6)  # integer timesteps accepted
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))  # sin(0)=0, cos(0)=1
    assert torch.allclose(emb[1, 0], torch.sin(torch.tensor(3.0)))  # highest frequency is 1


# ----------------------------------------------------------------------------------------------- UNet


def test_unet_ddpm_cifar10_parameter_count():
    with torch.device("meta"):  # no memory, no init cost
        net = UNet(
            (3, 32, 32), 0, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
            attention_resolutions=(16,), dropout=0.1,
        )
    n = sum(p.numel() for p in net.parameters())
    assert 35.0e6 <= n <= 36.5e6, n  # Ho et al. 2020 report 35.7M


@pytest.mark.parametrize(
    "data_shape, channel_mults",
    [
        ((1, 8, 8), (1, 2)),
        ((3, 16, 16), (1, 2, 2)),
        ((1, 7, 7), (1,)),  # odd size, single level
        ((3, 12, 20), (1, 2, 2)),  # non-square, odd bottleneck (3x5)
        ((2, 6, 6), (1, 2)),  # odd bottleneck (3x3)
    ],
)
@pytest.mark.parametrize("num_classes", [0, 5])
def test_unet_output_shapes(data_shape, channel_mults, num_classes):
    net = _tiny_unet(data_shape, num_classes, channel_mults=channel_mults, attention_resolutions=(8, 6))
    x = torch.randn(3, *data_shape)
    t = torch.tensor([0.0, 10.0, 999.0])
    y = torch.tensor([0, 4, 5]) if num_classes else None  # index num_classes is the NULL label
    assert net(x, t, y).shape == (3, *data_shape)
    assert net(x, t).shape == (3, *data_shape)  # y=None (all NULL when conditional)
    assert net(x, torch.tensor([1, 2, 3])).shape == (3, *data_shape)  # int timesteps
    assert net(x, torch.tensor(5.0)).shape == (3, *data_shape)  # scalar t broadcasts


def test_unet_out_channels_for_learned_variance():
    net = _tiny_unet((3, 8, 8), out_channels=6)
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 6, 8, 8)


def test_unet_bad_image_size_raises():
    with pytest.raises(ValueError, match="30x30"):
        UNet((3, 30, 30), 0, channel_mults=(1, 2, 2, 2))


def test_unet_zero_init_output():
    net = _tiny_unet()
    assert torch.all(net(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])) == 0)


def test_unet_time_and_label_conditioning_matter():
    torch.manual_seed(0)
    net = _tiny_unet(num_classes=3, time_scale=1000.0).eval()
    _randomize_zero_init(net)
    x = torch.randn(2, 1, 8, 8)
    out_a = net(x, torch.tensor([0.1, 0.1]), torch.tensor([0, 0]))
    out_b = net(x, torch.tensor([0.9, 0.9]), torch.tensor([0, 0]))
    out_c = net(x, torch.tensor([0.1, 0.1]), torch.tensor([1, 1]))
    out_null = net(x, torch.tensor([0.1, 0.1]))
    out_null_explicit = net(x, torch.tensor([0.1, 0.1]), torch.tensor([3, 3]))
    assert (out_a - out_b).abs().max() > 1e-3  # t matters
    assert (out_a - out_c).abs().max() > 1e-3  # y matters
    torch.testing.assert_close(out_null, out_null_explicit)  # y=None == NULL label


def test_unet_gradient_checkpointing_matches():
    torch.manual_seed(0)
    ref = _tiny_unet((1, 8, 8), 2, dropout=0.2)
    _randomize_zero_init(ref)
    ckpt = _tiny_unet((1, 8, 8), 2, dropout=0.2, gradient_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 7.0]), torch.tensor([0, 1])
    outs, grads = [], []
    for net in (ref, ckpt):
        net.train()
        torch.manual_seed(1)  # same dropout masks; checkpointing replays the RNG state
        out = net(x, t, y)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for g_ref, g_ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(g_ref, g_ckpt)


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    net = _tiny_unet((1, 8, 8), 0, num_res_blocks=1)
    x, t, eps = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 50.0, 200.0, 900.0]), torch.randn(4, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (net(x, t) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------------------------------- MLPDenoiser


@pytest.mark.parametrize("num_classes", [0, 4])
@pytest.mark.parametrize("data_shape", [(2,), (3,), (1, 4, 4)])
def test_mlp_output_shapes(data_shape, num_classes):
    net = MLPDenoiser(data_shape, num_classes, hidden_dim=32, num_layers=2, time_embed_dim=15)
    x = torch.randn(5, *data_shape)
    t = torch.arange(5)
    y = torch.tensor([0, 1, 2, 3, 4]) if num_classes else None
    assert net(x, t, y).shape == (5, *data_shape)
    assert net(x, t.float()).shape == (5, *data_shape)


def test_mlp_out_channels_and_conditioning():
    torch.manual_seed(0)
    net = MLPDenoiser((2,), 3, hidden_dim=32, num_layers=2, out_channels=4, time_scale=1000.0)
    x = torch.randn(6, 2)
    out = net(x, torch.full((6,), 0.1))
    assert out.shape == (6, 4)
    assert (out - net(x, torch.full((6,), 0.8))).abs().max() > 1e-4  # t matters
    assert (out - net(x, torch.full((6,), 0.1), torch.zeros(6, dtype=torch.long))).abs().max() > 1e-4
    torch.testing.assert_close(out, net(x, torch.full((6,), 0.1), torch.full((6,), 3)))  # None == NULL


def test_mlp_fits_2d_points():
    torch.manual_seed(0)
    net = MLPDenoiser((2,), 0, hidden_dim=64, num_layers=2)
    x, t, eps = torch.randn(64, 2), torch.randint(0, 1000, (64,)).float(), torch.randn(64, 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(50):
        loss = (net(x, t) - eps).square().mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
