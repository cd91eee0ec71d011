"""Fréchet distance between feature statistics of real and generated images (Heusel et al. 2017), through
torchmetrics with a pluggable feature network: a classifier lit_gen trains on the embedded datasets
(offline), or Inception-v3 when its weights are on disk."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lit_gen.nets.classifier import ImageClassifier


class ClassifierFeatures(nn.Module):
    """Penultimate-layer features of a trained :class:`ImageClassifier`; takes images in [-1, 1]."""

    def __init__(self, classifier: ImageClassifier, name: str) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())


def save_feature_net(classifier: ImageClassifier, config: dict, path: str | Path,
                     val_accuracy: float) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "state_dict": classifier.state_dict(), "val_accuracy": val_accuracy}, path)


def load_feature_net(path: str | Path) -> ClassifierFeatures:
    """Features of a classifier saved by ``python -m lit_gen.metrics train``; named after its file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"feature network not found: {str(path)!r}; make one with "
            f"`python -m lit_gen.metrics train --data digits --output {path}`"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    classifier = ImageClassifier(**saved["config"])
    classifier.load_state_dict(saved["state_dict"])
    return ClassifierFeatures(classifier, path.stem)


def frechet_distance(features: nn.Module) -> FrechetInceptionDistance:
    """A torchmetrics Fréchet distance on ``features`` (images in [-1, 1]); real statistics are kept across
    ``reset`` so they are computed once."""
    return FrechetInceptionDistance(feature=features, reset_real_features=False, normalize=True)


def kernel_distance(features: nn.Module, subset_size: int = 1000,
                    subsets: int = 100) -> KernelInceptionDistance:
    """torchmetrics' KID (Bińkowski et al. 2018: the unbiased MMD^2 estimate with a cubic polynomial kernel,
    averaged over random subsets) on ``features`` (images in [-1, 1]); real features are kept across
    ``reset``."""
    with warnings.catch_warnings():  # that it keeps every feature: the point of it, at FID-set sizes
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        return KernelInceptionDistance(feature=features, subsets=subsets, subset_size=subset_size,
                                       reset_real_features=False, normalize=True)


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048) of images in [-1, 1], with torch-fidelity's FID weights read from a
    file (nothing is downloaded); the standard FID's feature extractor, as torchmetrics runs it."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"Inception weights not found: {str(weights_path)!r} (torch-fidelity's "
                                    "pt_inception-2015-12-05 file; download it once where there is internet)")
        torch.load(weights_path, map_location="cpu", weights_only=True)  # refuse a file that would run code
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:  # torch-fidelity missing
            raise ImportError("Inception features need torch-fidelity: pip install "
                              "'lit_gen[inception]'") from err
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights_path))
        self.num_features, self.name = 2048, "inception"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch-fidelity's extractor takes uint8 RGB images and resizes them to 299 itself
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.net((((x.float() + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8)).reshape(x.shape[0],
                                                                                                   -1)


def inception_features(weights_path: str | Path) -> InceptionFeatures:
    return InceptionFeatures(weights_path)


def inception_frechet_distance(weights_path: str | Path) -> FrechetInceptionDistance:
    """The standard Inception-v3 FID on images in [-1, 1] (torch-fidelity's weights, read from
    ``weights_path``)."""
    return frechet_distance(InceptionFeatures(weights_path))


def train_feature_net(data, steps: int = 1500, lr: float = 2e-3,
                      seed: int = 0) -> tuple[ImageClassifier, float, dict]:
    """Train an :class:`ImageClassifier` on a labelled DataModule; returns it, its validation accuracy and
    config."""
    torch.manual_seed(seed)
    data.setup("fit")
    config = {"data_shape": tuple(data.data_shape), "num_classes": data.num_classes}
    net = ImageClassifier(**config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    from tqdm.auto import tqdm

    step, bar = 0, tqdm(total=steps, desc="feature net", unit="step")
    while step < steps:
        for batch in data.train_dataloader():
            # light noise: features robust to sample noise
            x = batch["x"] + 0.05 * torch.randn_like(batch["x"])
            loss = nn.functional.cross_entropy(net(x), batch["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update()
            if step == steps:
                break
    bar.close()
    net.eval()
    with torch.no_grad():
        correct = total = 0
        for batch in data.val_dataloader():
            correct += (net(batch["x"]).argmax(1) == batch["y"]).sum().item()
            total += len(batch["y"])
    return net, correct / total, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_gen.metrics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the feature network of an embedded dataset")
    train.add_argument("--data", choices=["digits", "shapes"], default="digits")
    train.add_argument("--image_size", type=int, default=16)
    train.add_argument("--steps", type=int, default=1500)
    train.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from lit_gen.data import DigitsDataModule, ShapesDataModule

    data_class = {"digits": DigitsDataModule, "shapes": ShapesDataModule}[args.data]
    data = data_class(image_size=args.image_size, batch_size=128)
    net, accuracy, config = train_feature_net(data, args.steps)
    save_feature_net(net, config, args.output, accuracy)
    print(f"feature network for {args.data} {args.image_size}x{args.image_size}: validation accuracy "
          f"{accuracy:.3f}, saved to {args.output}")


if __name__ == "__main__":
    main()
