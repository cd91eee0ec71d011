"""The Fréchet distance with lit_gen's offline feature network."""

import numpy as np
import pytest
import torch
from scipy import linalg

from lit_gen.callbacks.fid import resolve_features
from lit_gen.data import DigitsDataModule
from lit_gen.metrics import frechet_distance, load_feature_net


@pytest.fixture(scope="module")
def digits():
    data = DigitsDataModule(image_size=16)
    data.setup("fit")
    return torch.stack([data.train_dataset[i]["x"] for i in range(600)])


def _fid(features, real, fake):
    metric = frechet_distance(features)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_shipped_feature_net_separates_digits_from_noise(digits):
    features = load_feature_net(resolve_features("digits16"))
    same = _fid(features, digits[:300], digits[300:])
    blurred = _fid(features, digits[:300], torch.nn.functional.avg_pool2d(digits[300:], 3, 1, 1))
    noise = _fid(features, digits[:300], torch.rand_like(digits[300:]) * 2 - 1)
    assert same < blurred < noise
    assert same < 0.2 * noise


def test_frechet_distance_matches_closed_form(digits):
    """torchmetrics' value equals ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) computed with scipy."""
    features = load_feature_net(resolve_features("digits16"))
    real, fake = digits[:300], torch.nn.functional.avg_pool2d(digits[300:], 3, 1, 1)
    with torch.no_grad():
        f1, f2 = features(real).double().numpy(), features(fake).double().numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert _fid(features, real, fake) == pytest.approx(expected, rel=1e-3)


def test_missing_feature_net_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lit_gen.metrics train"):
        load_feature_net(tmp_path / "nope.pt")


def test_inception_fid_needs_its_weights_on_disk(tmp_path):
    from lit_gen.metrics import inception_frechet_distance

    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        inception_frechet_distance(tmp_path / "pt_inception.pth")


def test_inception_features_from_a_weights_file(tmp_path, monkeypatch):
    """Inception-v3 features read from a weights file (made here offline from the architecture's own random
    initialisation): loaded exactly, 2048 features per image, grey images as RGB; a file that would run code
    is refused."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    from lit_gen.metrics import InceptionFeatures, frechet_distance

    # no download: skip the pretrained weights to write a file of random ones
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        state = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).state_dict()
    torch.save(state, tmp_path / "pt_inception.pth")
    features = InceptionFeatures(tmp_path / "pt_inception.pth")
    name = next(k for k, v in state.items() if v.dtype.is_floating_point and v.std() > 0)
    torch.testing.assert_close(features.net.state_dict()[name], state[name], rtol=0, atol=0)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    f = features(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    grey = x[:, :1]
    torch.testing.assert_close(features(grey), features(grey.expand(-1, 3, -1, -1)))
    torch.testing.assert_close(features(x.flip(0)), f.flip(0))  # per image, not per batch
    frechet_distance(features).update(x, real=True)  # plugs into the metric

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        InceptionFeatures(tmp_path / "evil.pth")


def test_shipped_shapes_feature_net_classifies_held_out_shapes():
    from lit_gen.data import ShapesDataModule

    # unseen renderings
    data = ShapesDataModule(image_size=16, num_train=64, num_val=64, num_test=400, seed=1)
    data.setup("test")
    batch = next(iter(torch.utils.data.DataLoader(data.test_dataset, batch_size=400)))
    features = load_feature_net(resolve_features("shapes16"))
    accuracy = (features.classifier(batch["x"]).argmax(-1) == batch["y"]).float().mean().item()
    assert accuracy > 0.97, accuracy


def test_precision_recall_against_brute_force_and_mode_dropping():
    """Kynkäänniemi et al.'s k-NN precision and recall equal a loop over the definition; a model that drops
    half of the modes keeps its precision and loses recall; disjoint sets score 0."""
    from lit_gen.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    real = centres[torch.arange(200) % 4] + 0.5 * torch.randn(200, 2, generator=g)
    fake = centres[torch.arange(150) % 2] + 0.5 * torch.randn(150, 2, generator=g)  # modes 0 and 1 only

    def brute(a, b, k=3):  # share of a inside the k-NN balls of b
        b = b.double().tolist()
        dist = lambda p, q: sum((u - v) ** 2 for u, v in zip(p, q, strict=True)) ** 0.5  # noqa: E731
        radius = [sorted(dist(q, o) for o in b)[k] for q in b]  # [0] is q itself
        return sum(any(dist(p, q) <= r for q, r in zip(b, radius, strict=True))
                   for p in a.double().tolist()) / len(a)

    precision, recall = precision_recall(real, fake)
    assert precision == pytest.approx(brute(fake, real), abs=1e-12)
    assert recall == pytest.approx(brute(real, fake), abs=1e-12)
    assert precision > 0.9 and 0.4 < recall < 0.6
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k=3 must be in"):
        precision_recall(real[:3], fake)
