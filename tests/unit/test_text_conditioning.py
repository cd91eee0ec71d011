"""Text conditioning against independent oracles: cross-attention to a constant context is a context-free
bias, a CLIP's text tower gives CLIP's own embedding, condition dropout drops whole captions, classifier-free
guidance at s = 0 and 1 is the null-caption and the conditional model, and the one-line errors."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lit_gen.data.shapes import generate_shapes
from lit_gen.methods import DDPM, NCSN, FlowMatching, ScoreSDE
from lit_gen.nets import DiT, MLPDenoiser, UNet
from lit_gen.nets.clip import CLIPNet
from lit_gen.nets.text_encoder import TextEncoder, clip_text_weights
from lit_gen.nets.unet import CrossAttentionBlock
from lit_gen.process import drop_labels
from lit_gen.process.guidance import null_like

TINY_UNET = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[8])
TEXT = {"dim": 16, "depth": 1, "heads": 2, "max_length": 12}
SHAPES = generate_shapes(32, 16, torch.Generator().manual_seed(0))


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def text_model(method: type = DDPM, **kwargs):
    """A text-conditional model of ``method`` with a tiny UNet, randomised, its tokenizer fitted."""
    torch.manual_seed(0)
    model = method(data_shape=(3, 16, 16), net=partial(UNet, **TINY_UNET), text=TEXT, **kwargs)
    model.tokenizer.fit(SHAPES.captions)
    randomize(model.net)
    model.ema.module.load_state_dict(model.net.state_dict())
    return model


def test_cross_attention_to_a_constant_context_is_a_context_free_bias():
    block = randomize(CrossAttentionBlock(8, 6, 2, 4)).double()
    token = torch.randn(2, 1, 6, dtype=torch.float64)
    x1, x2 = torch.randn(2, 2, 8, 5, 5, dtype=torch.float64)
    for context in (token, token.expand(2, 7, 6)):  # M copies of one token attend like that one token
        d1, d2 = block(x1, context) - x1, block(x2, context) - x2
        torch.testing.assert_close(d1, d2, rtol=0, atol=1e-8)  # independent of x
        torch.testing.assert_close(d1, d1[..., :1, :1].expand_as(d1), rtol=0, atol=1e-8)  # of the position
    assert torch.equal(block(x1, None), x1)
    # a fresh block is the identity (zero output projection): a new text model starts from the unconditional
    fresh = CrossAttentionBlock(8, 6, 2, 4)
    assert torch.equal(fresh(x1.float(), token.float()), x1.float())


def test_unet_context_dim_adds_cross_attention_after_each_self_attention():
    plain = UNet((3, 16, 16), 0, **TINY_UNET)  # its names are the old ones (tests/fixtures load them)
    text = UNet((3, 16, 16), 0, **TINY_UNET, context_dim=6)
    assert not any(isinstance(m, CrossAttentionBlock) for m in plain.modules())
    crosses = [m for m in text.modules() if isinstance(m, CrossAttentionBlock)]
    assert len(crosses) == sum(m.__class__.__name__ == "AttentionBlock" for m in text.modules())
    randomize(text)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 5.0])
    a, b = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    assert not torch.allclose(text(x, t, context=a), text(x, t, context=b))
    # per sample: sample 0's output depends on sample 0's caption only
    torch.testing.assert_close(text(x, t, context=torch.stack([a[0], b[1]]))[0], text(x, t, context=a)[0])


def test_a_clip_text_tower_gives_clips_embedding():
    clip = randomize(CLIPNet((3, 16, 16), 30, 6, 20, dim=16, depth=2, heads=2, channels=8, stages=1,
                             embed_dim=8)).double().eval()
    encoder = TextEncoder(30, 6, 20, dim=16, depth=2, heads=2).double()
    encoder.load_state_dict(clip_text_weights(clip.state_dict()))
    ids = torch.tensor([[1, 5, 7, 20, 21, 22], [3, 4, 9, 11, 2, 25]])
    states = encoder(ids)
    keep = (ids < 20).double()[..., None]
    pooled = (states * keep).sum(1) / keep.sum(1)
    expected = clip.encode_text(ids)
    torch.testing.assert_close(torch.nn.functional.normalize(clip.text_proj(pooled), dim=-1), expected,
                               rtol=0, atol=1e-8)


def test_condition_dropout_drops_whole_captions_and_keeps_label_draws():
    ids = torch.arange(40).view(8, 5)
    null = torch.full((5,), -1)
    torch.manual_seed(0)
    dropped = drop_labels(ids, 0.5, null)
    rows_null = (dropped == -1).all(1)
    assert torch.equal(dropped[~rows_null], ids[~rows_null]) and 0 < rows_null.sum() < 8
    assert not ((dropped == -1).any(1) & ~rows_null).any()  # never part of a caption
    # labels (B,): the same draws as before captions existed (old runs resume identically)
    labels = torch.arange(8)
    torch.manual_seed(1)
    expected = torch.where(torch.rand(8) < 0.3, torch.full_like(labels, 10), labels)
    torch.manual_seed(1)
    assert torch.equal(drop_labels(labels, 0.3, 10), expected)
    assert torch.equal(null_like(ids, null), null.expand(8, 5))


# each family of noise-process methods with a deterministic sampler of 3 steps
CFG_MODELS = {"DDPM": (DDPM, {"num_timesteps": 10, "sampler": "ddim"}),
              "ScoreSDE": (ScoreSDE, {"num_scales": 10, "sampler": "dpmpp2m"}),
              "NCSN": (NCSN, {"sampler": "heun"}),
              "FlowMatching": (FlowMatching, {"sampler": "euler"})}


@pytest.mark.parametrize("name", list(CFG_MODELS))
def test_cfg_on_text_at_scale_0_and_1_is_the_null_caption_and_the_conditional_model(name):
    method, args = CFG_MODELS[name]
    model = text_model(method, sampling_steps=3, **args)
    captions = SHAPES.captions[:2]
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def draw(scale, caps=captions):
        return model.sample(2, latents=noise.clone(), captions=caps, guidance_scale=scale).x

    net = model.sampling_net
    ids = model.caption_ids(captions)
    # s = 1: the conditional model; s = 0: the null caption's
    x_t, t = noise, torch.tensor([5, 5])
    torch.testing.assert_close(net(x_t, t, None), net(x_t, t, model.null_text.expand(2, -1)), rtol=0, atol=0)
    conditional, unconditional = draw(1.0), draw(0.0)
    assert not torch.allclose(conditional, unconditional)
    # the oracle: the conditional model on the empty caption's ids, and on the captions' own
    encode = model.caption_ids
    model.caption_ids = lambda caps: model.null_text.expand(len(caps), -1)
    torch.testing.assert_close(draw(1.0), unconditional, rtol=0, atol=0)
    torch.testing.assert_close(draw(7.0), unconditional, rtol=0, atol=0)  # guiding null to null: no change
    model.caption_ids = encode
    other = draw(1.0, SHAPES.captions[2:4])
    assert not torch.allclose(conditional, other)
    guided = draw(3.0)
    assert not torch.allclose(guided, conditional) and not torch.allclose(guided, unconditional)
    assert ids.shape == (2, 12)
    out = model.sample(2, latents=noise.clone(), captions=captions)
    assert out.captions == captions and out.labels is None


def test_text_errors_are_one_line():
    model = text_model(num_timesteps=10)
    with pytest.raises(ValueError, match="conditioned on text, not labels"):
        model.sample(2, labels=torch.tensor([0, 1]))
    plain = DDPM(data_shape=(3, 16, 16), net=partial(UNet, **TINY_UNET), num_timesteps=10)
    with pytest.raises(ValueError, match="not text-conditional"):
        plain.sample(1, captions=["a red circle"])
    with pytest.raises(ValueError, match="two conditions"):
        DDPM(data_shape=(3, 16, 16), num_classes=5, class_conditional=True, text=TEXT)
    with pytest.raises(ValueError, match="no setting"):
        DDPM(data_shape=(3, 16, 16), text={"width": 3})
    bad = FlowMatching(data_shape=(2,), net=MLPDenoiser, text=TEXT)
    with pytest.raises(ValueError, match="cross-attends"):
        bad.build_net()
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs"):
        DDPM(data_shape=(3, 16, 16), guidance_scale=3.0)


def test_dit_text_model_trains_and_samples():
    torch.manual_seed(0)
    model = FlowMatching(data_shape=(3, 16, 16), net=partial(DiT, hidden_size=16, depth=1, num_heads=2,
                                                             patch_size=4),
                         text=TEXT, sampling_steps=3, guidance_scale=2.0)
    model.tokenizer.fit(SHAPES.captions)
    batch = {"x": torch.stack([SHAPES[i]["x"] for i in range(4)]).float() / 127.5 - 1,
             "caption": SHAPES.captions[:4]}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert model.net.text.token_emb.weight.grad is not None  # the text encoder trains with the model
    out = model.sample(2, captions=SHAPES.captions[:2])
    assert out.x.shape == (2, 3, 16, 16) and torch.isfinite(out.x).all()
