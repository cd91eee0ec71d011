"""DALL-E's pieces against independent oracles: attention masks (autograd: no leakage, exactly the pattern),
the KV cache (equal to recomputation), the BPE, Gumbel-softmax and the KL to the uniform prior, the decoder
densities, sampling filters, the loss weights, the CLIP loss, and candidate independence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_gen.dalle.generation import candidate_generators, filter_logits, sample_next, top_k_from_threshold
from lit_gen.dalle.reconstruction import Gaussian, Laplace, LogitLaplace, reconstruction
from lit_gen.dalle.relaxation import (
    categorical_sample,
    codebook_usage,
    exponential_anneal,
    gumbel_softmax,
    kl_to_uniform,
    linear_ramp,
)
from lit_gen.data.shapes import ShapeParams
from lit_gen.methods.clip import clip_loss
from lit_gen.nets.transformer import MASK_KINDS, DALLETransformer, KVCache, attention_mask
from lit_gen.text import BPETokenizer

T, GRID = 3, (3, 4)  # text tokens, image grid: S = 3 + 12 = 15 positions


def tiny_transformer(kinds: list[str], depth: int = 1, seed: int = 0) -> DALLETransformer:
    torch.manual_seed(seed)
    return DALLETransformer(10, T, 6, GRID, dim=16, depth=depth, heads=2, attention=kinds).double().eval()


def random_ids(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text, image = torch.randint(10, (batch, T), generator=g), torch.randint(6, (batch, GRID[0] * GRID[1]),
                                                                            generator=g)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), text, image[:, :-1]], 1)


# --- masks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_shape_causality_and_text_rows(kind):
    mask = attention_mask(kind, T, GRID)
    S = T + GRID[0] * GRID[1]
    assert mask.shape == (S, S) and mask.dtype == torch.bool
    assert mask.diagonal().all()  # every position sees itself
    assert not torch.triu(mask, 1).any()  # nothing after the query
    assert mask[: T + 1, : T + 1].equal(torch.tril(torch.ones(T + 1, T + 1, dtype=torch.bool)))  # causal text
    assert mask[T:, : T + 1].all()  # every image query sees all the text


def test_mask_patterns_by_hand():
    """Grid 3 x 4; the query at position T + 6 predicts image token 6 at (row 1, col 2); keys b < 6 are image
    tokens at positions T + 1 + b."""
    h, w = GRID
    row = attention_mask("row", T, GRID)[T + 6, T + 1 :].nonzero().flatten().tolist()
    assert row == [2, 3, 4, 5]  # the previous w = 4 tokens (the one above, 2, included)
    column = attention_mask("column", T, GRID)[T + 6, T + 1 :].nonzero().flatten().tolist()
    assert column == [2, 5]  # token 2 above in column 2, and the previous token
    conv = attention_mask("conv", T, GRID)[T + 6, T + 1 :].nonzero().flatten().tolist()
    assert conv == [1, 2, 3, 5]  # row 0, columns 1-3, and (1, 1)
    assert attention_mask("full", T, GRID)[T + 6, T + 1 :].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_no_leakage_and_one_layer_depends_exactly_on_its_mask(kind):
    """d logits_i / d input_j is zero for j > i (autograd, float64) for every mask in a 3-layer stack; with
    one layer the inputs that logits_i depends on are exactly the mask's row i."""
    ids = random_ids(1)
    for depth in (1, 3):
        net = tiny_transformer([kind], depth)
        h0 = net.embed(ids, 0).detach().requires_grad_(True)
        logits = net.transform(h0)
        S = h0.shape[1]
        for i in range(S):
            (grad,) = torch.autograd.grad(logits[0, i].sum(), h0, retain_graph=True)
            depends = grad[0].abs().sum(-1) > 0  # (S,)
            assert not depends[i + 1 :].any(), (kind, depth, i)
            if depth == 1:
                assert depends.equal(attention_mask(kind, T, GRID)[i]), (kind, i)


# --- KV cache -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", [["full"], ["row"], ["column"], ["conv"], ["row", "column", "row", "conv"]])
def test_kv_cache_logits_equal_recomputation(kinds):
    net = tiny_transformer(kinds, depth=len(kinds) + 1)
    ids = random_ids(2)
    with torch.no_grad():
        full = net.forward_positions(ids)  # (B, S, V)
        cache = KVCache()
        # the prompt at once, then one token at a time
        first = net.forward_positions(ids[:, : T + 1], 0, cache)
        steps = [net.forward_positions(ids[:, p : p + 1], p, cache) for p in range(T + 1, ids.shape[1])]
    incremental = torch.cat([first, *steps], 1)
    torch.testing.assert_close(incremental, full, rtol=1e-7, atol=1e-7)  # float64: rounding is ~1e-15
    with pytest.raises(ValueError, match="cache holds"):
        net.forward_positions(ids[:, :1], 3, KVCache())


# --- tokenizer ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captions() -> list[str]:
    return ShapeParams.sample(500, torch.Generator().manual_seed(0)).captions()


def test_bpe_round_trip_padding_and_state_dict(captions):
    tok = BPETokenizer(512, 12).fit(captions)
    ids = tok.encode(captions[:50])
    assert ids.shape == (50, 12)
    assert tok.decode(ids) == captions[:50]  # round trip (the captions are lower case already)
    assert tok.decode(tok.encode(["A Small RED circle"])) == ["a small red circle"]  # normalised
    row = tok.encode(["a red circle"])[0]
    n = int((row < tok.vocab_size).sum())
    assert row[n:].tolist() == [tok.vocab_size + i for i in range(n, 12)]  # one padding id per position
    assert tok.null(2).tolist() == [[tok.vocab_size + i for i in range(12)]] * 2
    other = BPETokenizer(512, 12)
    other.load_state_dict(tok.state_dict())  # the tokenizer travels in the state dict
    assert other.encode(captions[:5]).equal(ids[:5])


def test_bpe_long_and_empty_prompts(captions):
    tok = BPETokenizer(512, 4).fit(captions)
    with pytest.warns(UserWarning, match="more than max_length=4"):
        ids = tok.encode(["a small red circle at the top left"])
    assert tok.decode(ids) == ["a small red circle"]
    strict = BPETokenizer(512, 4, truncate="error").fit(captions)
    with pytest.raises(ValueError, match="max_length=4"):
        strict.encode(["a small red circle at the top left \u00e9\u00e9\u00e9"])
    with pytest.raises(ValueError, match="empty caption"):
        tok.encode(["  "])
    with pytest.raises(RuntimeError, match="not been fitted"):
        BPETokenizer().encode(["a"])


# --- Gumbel-softmax, KL, schedules, usage -------------------------------------------------------------------
def test_gumbel_softmax_tends_to_the_one_hot_of_the_gumbel_max_sample():
    logits = torch.randn(4, 7, 3, 3, dtype=torch.float64)
    soft = gumbel_softmax(logits, 1e-3, torch.Generator().manual_seed(5))
    hard = categorical_sample(logits, torch.Generator().manual_seed(5))  # the same Gumbel noise
    torch.testing.assert_close(soft, F.one_hot(hard, 7).permute(0, 3, 1, 2).double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(soft.sum(1), torch.ones(4, 3, 3, dtype=torch.float64))


def test_categorical_sample_frequencies_match_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).expand(40000, -1)
    codes = categorical_sample(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(codes, minlength=4).double() / len(codes)
    torch.testing.assert_close(freq, logits[0].double().softmax(0), rtol=0, atol=0.01)


def test_kl_to_uniform_is_log_k_minus_entropy_and_nonnegative():
    logits = torch.randn(3, 9, 2, 2, dtype=torch.float64) * 3
    kl = kl_to_uniform(logits)
    q = torch.distributions.Categorical(logits=logits.movedim(1, -1))
    uniform = torch.distributions.Categorical(logits=torch.zeros(3, 2, 2, 9, dtype=torch.float64))
    torch.testing.assert_close(kl.double(), torch.distributions.kl_divergence(q, uniform), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(kl.double(), math.log(9) - q.entropy(), rtol=1e-6, atol=1e-6)
    assert (kl >= 0).all() and kl_to_uniform(torch.zeros(1, 9, 1, 1)).abs().max() < 1e-6


def test_schedules_and_codebook_usage():
    assert exponential_anneal(0, 1.0, 1 / 16, 100) == 1.0
    assert exponential_anneal(50, 1.0, 1 / 16, 100) == pytest.approx(0.25)
    assert exponential_anneal(500, 1.0, 1 / 16, 100) == pytest.approx(1 / 16)
    assert linear_ramp(0, 6.6, 10) == 0 and linear_ramp(5, 6.6, 10) == pytest.approx(3.3)
    assert linear_ramp(99, 6.6, 10) == pytest.approx(6.6)
    assert codebook_usage(torch.tensor([5, 5, 5, 5])) == (pytest.approx(4.0), 0)
    perplexity, dead = codebook_usage(torch.tensor([10, 0, 10, 0]))
    assert perplexity == pytest.approx(2.0) and dead == 2


# --- decoder densities --------------------------------------------------------------------------------------
def test_logit_laplace_is_a_density_and_the_others_match_torch():
    """f integrates to 1 over y in (0, 1) (trapezoid on a fine grid in float64, in the variable s =
    logit(y))."""
    mu, log_b = 0.7, math.log(0.3)
    # the tails beyond hold ~exp(-19 / 0.3) of the mass
    s = torch.linspace(-20, 20, 400001, dtype=torch.float64)
    y = torch.sigmoid(s)
    # lit_gen scale for this y (outside [-1, 1] at the tails: fine for the density)
    x = (y - 0.1) / 0.8 * 2 - 1
    out = torch.tensor([mu, log_b], dtype=torch.float64).view(1, 2, 1, 1).expand(len(s), 2, 1, 1)
    nll = LogitLaplace().nll(out, x.view(-1, 1, 1, 1))
    density_y = torch.exp(-nll)  # density in y
    integral = torch.trapezoid(density_y * y * (1 - y), s)  # dy = y (1 - y) ds
    assert integral.item() == pytest.approx(1.0, abs=1e-6)
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    mean = torch.randn(2, 3, 4, 4)
    normal = torch.distributions.Normal(mean, 0.1).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Gaussian(0.1).nll(mean, x), -normal, rtol=1e-5, atol=1e-3)
    laplace = torch.distributions.Laplace(mean, 0.2).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Laplace(0.2).nll(mean, x), -laplace, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="recon_loss='bce'"):
        reconstruction("bce", 0.1)


def test_logit_laplace_mean_inverts_the_pixel_map():
    x = torch.linspace(-1, 1, 11).view(1, 1, 1, 11)
    y = 0.8 * (x + 1) / 2 + 0.1
    out = torch.cat([torch.logit(y), torch.zeros_like(y)], 1)
    torch.testing.assert_close(LogitLaplace().mean(out), x, rtol=0, atol=1e-6)


# --- sampling filters ---------------------------------------------------------------------------------------
def test_top_k_top_p_and_threshold():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.6))  # 0.5 < 0.6 <= 0.7: the first two
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.1))  # the most likely always survives
    assert kept.tolist() == [[True, False, False, False, False]]
    assert top_k_from_threshold(0.5, 8192) == 4096 and top_k_from_threshold(0.9, 100) == 10
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    assert sample_next(logits.expand(3, -1), gens, temperature=0).tolist() == [0, 0, 0]
    draws = sample_next(logits.expand(3, -1), gens, top_k=1)
    assert draws.tolist() == [0, 0, 0]


def test_candidate_generators_depend_only_on_the_prompt_seed_and_index():
    a = candidate_generators(torch.Generator().manual_seed(11), 4)
    b = candidate_generators(torch.Generator().manual_seed(11), 2)
    assert [g.initial_seed() for g in a[:2]] == [g.initial_seed() for g in b]
    assert len({g.initial_seed() for g in a}) == 4


# --- losses -------------------------------------------------------------------------------------------------
def test_clip_loss_is_symmetric_and_the_mean_of_both_directions():
    logits = torch.randn(6, 6)
    target = torch.arange(6)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(clip_loss(logits), expected)
    torch.testing.assert_close(clip_loss(logits), clip_loss(logits.T))
    assert clip_loss(torch.eye(6) * 100) < 1e-6


def test_marginal_kl_sees_collapse_that_the_per_position_kl_does_not():
    from lit_gen.dalle.relaxation import marginal_kl_to_uniform

    collapsed = torch.full((8, 4, 2, 2), -20.0)
    collapsed[:, 0] = 20.0  # every position certain, all of them code 0
    spread = torch.full((8, 4, 2, 2), -20.0)
    for i in range(8):
        spread[i, i % 4] = 20.0  # certain too, but the batch uses each code equally
    # the per-position KL is blind
    torch.testing.assert_close(kl_to_uniform(collapsed), kl_to_uniform(spread))
    assert marginal_kl_to_uniform(collapsed).item() == pytest.approx(math.log(4), abs=1e-5)
    assert marginal_kl_to_uniform(spread).item() == pytest.approx(0.0, abs=1e-5)


def test_clip_net_logit_scale_is_clamped_and_loads_from_a_0_dim_checkpoint():
    from lit_gen.nets.clip import CLIPNet

    net = CLIPNet((3, 8, 8), num_text_tokens=20, text_len=4, pad_from=16, dim=16, depth=1, heads=2,
                  channels=8,
                  stages=1, embed_dim=8)
    state = net.state_dict()
    # 0-dim, as saved by lit_gen before ZeRO-3 support; e^10 > 100
    state["log_logit_scale"] = torch.tensor(10.0)
    net.load_state_dict(state)
    x, ids = torch.randn(3, 3, 8, 8), torch.randint(0, 16, (3, 4))
    logits, scale = net(x, ids)
    assert scale.item() == pytest.approx(100.0)  # CLIP's clamp
    torch.testing.assert_close(logits, 100.0 * net.encode_image(x) @ net.encode_text(ids).T)
