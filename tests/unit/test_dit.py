"""DiT (Peebles & Xie 2023): patchify round trip, adaLN-Zero blocks start as the identity, conditioning acts
only through its inputs, cross-attention to a constant context is a context-free bias, and the net serves
every noise-process method unchanged."""

from __future__ import annotations

import pytest
import torch

from lit_gen.nets.dit import PRESETS, DiT, DiTBlock, patchify, sincos_2d, unpatchify

TINY = dict(hidden_size=32, depth=2, num_heads=2, patch_size=2)


def randomize(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers weights, so that every path of the net is seen."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("p", [1, 2, 4])
def test_patchify_and_unpatchify_round_trip(p):
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (8 // p) * (12 // p), p * p * 3)
    assert torch.equal(unpatchify(tokens, p, 3, 8, 12), x)
    # token k is the patch at row k // (W / p), column k % (W / p), as the convolution's output flattens
    k = 5
    r, c = divmod(k, 12 // p)
    assert torch.equal(tokens[:, k].reshape(2, p, p, 3).permute(0, 3, 1, 2), x[:, :, r * p:(r + 1) * p,
                                                                                c * p:(c + 1) * p])


def test_a_fresh_block_is_the_identity_and_a_fresh_net_predicts_zero():
    block = DiTBlock(32, 2)
    x, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    assert torch.equal(block(x, c), x)
    net = DiT((3, 8, 8), 0, 3, **TINY)
    assert torch.equal(net(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 7.0])), torch.zeros(2, 3, 8, 8))


def test_shapes_presets_and_learned_variance_channels():
    net = randomize(DiT((1, 16, 16), 10, 2, **TINY))
    out = net(torch.randn(4, 1, 16, 16), torch.tensor(5.0), torch.tensor([0, 1, 2, 10]))
    assert out.shape == (4, 2, 16, 16)
    small = DiT((4, 32, 32), 0, 8, size="S", patch_size=2)
    params = sum(p.numel() for p in small.parameters())
    assert 32e6 < params < 34e6  # DiT-S/2: 33 M parameters in the paper
    assert set(PRESETS) == {"S", "B", "L", "XL"}
    with pytest.raises(ValueError, match="patch_size=4"):
        DiT((3, 6, 6), 0, 3, **{**TINY, "patch_size": 4})


def test_conditioning_acts_only_through_its_inputs():
    net = randomize(DiT((1, 8, 8), 3, 1, **TINY)).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([0, 1, 2, 3])
    out = net(x, t, y)
    # sample i depends on (x_i, t_i, y_i) only: changing sample 0's label leaves the others alone
    other = net(x, t, torch.tensor([2, 1, 2, 3]))
    assert not torch.allclose(other[0], out[0]) and torch.allclose(other[1:], out[1:], atol=1e-6)
    assert torch.allclose(net(x, t), net(x, t, torch.full((4,), 3)), atol=0)  # None: the null label
    later = net(x, t + 1, y)
    assert not torch.allclose(later, out)


def test_cross_attention_to_a_constant_context_is_a_context_free_bias():
    """Attention weights sum to 1, so attending to M copies of one vector gives that vector's value: the
    same as a context of one token, whatever the query."""
    net = randomize(DiT((1, 8, 8), 0, 1, **TINY, context_dim=12)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 9.0])
    token = torch.randn(2, 1, 12)
    one = net(x, t, context=token)
    many = net(x, t, context=token.expand(2, 7, 12))
    assert torch.allclose(one, many, atol=1e-5)
    assert not torch.allclose(one, net(x, t, context=torch.randn(2, 1, 12)), atol=1e-3)


def test_sincos_positions_are_distinct_and_bounded():
    pos = sincos_2d(32, 4, 4)
    assert pos.shape == (16, 32) and pos.abs().max() <= 1
    assert torch.cdist(pos, pos).fill_diagonal_(1).min() > 0.1


def test_gradient_checkpointing_keeps_the_gradients():
    plain = randomize(DiT((1, 8, 8), 0, 1, **TINY)).train()
    ckpt = DiT((1, 8, 8), 0, 1, **TINY, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 5.0])
    for net in (plain, ckpt):
        net(x, t).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("method,args", [
    ("DDPM", {}), ("ImprovedDDPM", {}), ("ScoreSDE", {}), ("NCSN", {}), ("FlowMatching", {}),
    ("DDPM", {"class_conditional": True}),
])
def test_every_noise_process_method_trains_and_samples_with_it(method, args):
    import lit_gen.methods as methods

    cls = getattr(methods, method)
    extra = {"num_timesteps": 10} if method in ("DDPM", "ImprovedDDPM") else {}
    extra |= {"num_scales": 10} if method in ("ScoreSDE", "NCSN") else {}
    model = cls(data_shape=(1, 8, 8), num_classes=3 if args else 0,
                net=lambda shape, k, c: DiT(shape, k, c, **TINY), **extra, **args)
    model.configure_model()
    batch = {"x": torch.rand(4, 1, 8, 8) * 2 - 1, "y": torch.tensor([0, 1, 2, 0])}
    loss = model.loss(model.net, batch) if method in ("DDPM", "ImprovedDDPM") else None
    if loss is None:
        loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    out = model.sample(2, steps=3)
    assert out.x.shape == (2, 1, 8, 8) and torch.isfinite(out.x).all()
