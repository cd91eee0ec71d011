"""DataModules: item contract, attributes before setup, deterministic splits, distributed loaders,
captions, toy densities, and the torchvision sets offline on tiny fake files."""

import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from lit_gen.data import (
    CelebADataModule,
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    ShapesDataModule,
    Toy2DDataModule,
)
from lit_gen.data.base import split_indices
from lit_gen.data.shapes import SHAPE_KINDS, ShapeParams, render_shapes
from lit_gen.data.toy2d import (
    EIGHT_GAUSSIANS_STD,
    TOY2D_SAMPLERS,
    checkerboard_log_prob,
    eight_gaussians_centres,
    eight_gaussians_log_prob,
)

SMALL_SHAPES = dict(num_train=64, num_val=16, num_test=16)
SMALL_TOY = dict(num_train=256, num_val=64, num_test=64)


def make_small(kind: str, **kwargs):
    return {
        "digits": lambda: DigitsDataModule(**kwargs),
        "shapes": lambda: ShapesDataModule(**SMALL_SHAPES, **kwargs),
        "toy2d": lambda: Toy2DDataModule(**SMALL_TOY, **kwargs),
    }[kind]()


def attach_fake_trainer(dm, world_size: int, rank: int):
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    return dm


def check_item(item: dict, shape: tuple[int, ...], labelled: bool, num_classes: int = 0) -> None:
    x = item["x"]
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    if len(shape) == 3:
        assert x.min() >= -1 and x.max() <= 1
    assert ("y" in item) == labelled
    if labelled:
        assert item["y"].dtype == torch.int64 and item["y"].ndim == 0 and 0 <= item["y"] < num_classes


# --- embedded sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, shape, num_classes",
    [("digits", (1, 16, 16), 10), ("shapes", (3, 32, 32), 5), ("toy2d", (2,), 0)],
)
def test_attributes_before_setup_and_items(kind, shape, num_classes):
    dm = make_small(kind)
    assert dm.data_shape == shape and dm.num_classes == num_classes
    if len(shape) == 3:
        assert (dm.num_channels, dm.image_size, dm.image_size) == shape
    assert dm._splits is None  # nothing built before setup
    dm.setup("fit")
    for dataset in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert len(dataset) > 0
        check_item(dataset[0], shape, num_classes > 0, num_classes)
    batch = next(iter(dm.val_dataloader()))
    assert batch["x"].shape[1:] == shape


@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_digits_sizes_and_split_sizes(image_size):
    dm = DigitsDataModule(image_size=image_size, val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    assert dm.train_dataset[0]["x"].shape == (1, image_size, image_size)
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [1258, 180, 359]


def test_digits_bad_image_size():
    with pytest.raises(ValueError, match=r"image_size=12 .*\[8, 16, 32\]"):
        DigitsDataModule(image_size=12)


@pytest.mark.parametrize("kind", ["digits", "shapes", "toy2d"])
def test_deterministic_splits(kind):
    def splits(seed):
        dm = make_small(kind, seed=seed)
        dm.setup()
        return [torch.stack([d[i]["x"] for i in range(len(d))]) for d in (dm.train_dataset, dm.val_dataset)]

    a, b, c = splits(0), splits(0), splits(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    assert not torch.equal(a[0][: len(a[1])], a[1])  # splits come from different streams


def test_split_indices_partition():
    parts = split_indices(1797, [0.1, 0.2], torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [1258, 180, 359]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(1797))
    with pytest.raises(ValueError, match="fractions"):
        split_indices(10, [0.6, 0.5], torch.Generator())


def test_shapes_captions_match_labels():
    dm = ShapesDataModule(**SMALL_SHAPES)
    assert dm.class_names == SHAPE_KINDS
    dm.setup()
    for i in range(len(dm.train_dataset)):
        item = dm.train_dataset[i]
        words = item["caption"].split()
        assert words[:1] == ["a"] and words[3] == dm.class_names[item["y"]]
        assert set(words) <= set(dm.vocabulary)


def test_shapes_render_one_circle():
    kind, colour, size, centre = SHAPE_KINDS.index("circle"), 0, 2, 4  # large red circle, center
    params = ShapeParams(*(torch.tensor([v]) for v in (kind, colour, size, centre)), jitter=torch.zeros(1, 2))
    image = render_shapes(params, 32)[0]  # (3, 32, 32) in [0, 1]
    assert image[:, 16, 16].tolist() == [1.0, 0.0, 0.0]
    assert image[:, 0, 0].sum() == 0 and image[1:].sum() == 0
    assert math.isclose(image[0].sum().item(), math.pi * (0.18 * 32) ** 2, rel_tol=0.05)


# --- loaders ------------------------------------------------------------------------------------


def test_train_loader_is_distributed_and_per_rank():
    dms = [attach_fake_trainer(DigitsDataModule(batch_size=32, seed=3), 2, rank) for rank in (0, 1)]
    loaders = [dm.train_dataloader() for dm in dms]
    for loader in loaders:
        assert isinstance(loader.sampler, DistributedSampler) and loader.drop_last
        assert next(iter(loader))["x"].shape == (16, 1, 16, 16)
    rank_indices = [set(loader.sampler) for loader in loaders]
    assert not rank_indices[0] & rank_indices[1]
    assert len(rank_indices[0] | rank_indices[1]) == len(dms[0].train_dataset) // 2 * 2
    val = dms[1].val_dataloader()
    assert isinstance(val.sampler, DistributedSampler) and not val.sampler.shuffle


def test_single_process_loaders():
    dm = Toy2DDataModule(batch_size=50, **SMALL_TOY)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, DistributedSampler) and train.sampler.num_replicas == 1
    assert len(train) == 256 // 50
    assert not isinstance(val.sampler, DistributedSampler) and sum(len(b["x"]) for b in val) == 64


def test_batch_size_must_divide_world_size():
    dm = attach_fake_trainer(DigitsDataModule(batch_size=33), 2, 0)
    with pytest.raises(ValueError, match="batch_size=33 .*world size 2"):
        dm.train_dataloader()


def test_shuffle_order_depends_only_on_seed_and_epoch():
    def order(epoch, seed=0):
        sampler = DigitsDataModule(seed=seed).train_dataloader().sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3) == order(3)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)


# --- toy densities ------------------------------------------------------------------------------


def grid(half_width: float, step: float) -> torch.Tensor:
    centres = torch.arange(-half_width + step / 2, half_width, step, dtype=torch.float64)
    return torch.cartesian_prod(centres, centres)


def test_eight_gaussians_log_prob_is_exact():
    points = grid(6.0, 0.02)
    assert math.isclose(eight_gaussians_log_prob(points).exp().sum().item() * 0.02**2, 1.0, abs_tol=1e-4)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((8,), 1 / 8, dtype=torch.float64)),
        torch.distributions.Independent(
            torch.distributions.Normal(eight_gaussians_centres().double(), EIGHT_GAUSSIANS_STD), 1
        ),
    )
    x = torch.randn(1000, 2, dtype=torch.float64) * 3
    torch.testing.assert_close(eight_gaussians_log_prob(x), mixture.log_prob(x))


def test_checkerboard_log_prob():
    points = grid(5.0, 0.05)
    # a piecewise-constant density summed on a grid aligned with its squares: exact up to 1e-6 (a wrong
    # normalisation is off by a factor), far above float64 summation rounding on any machine
    assert math.isclose(checkerboard_log_prob(points).exp().sum().item() * 0.05**2, 1.0, abs_tol=1e-6)
    samples = TOY2D_SAMPLERS["checkerboard"](5000, torch.Generator().manual_seed(0))
    assert torch.isfinite(checkerboard_log_prob(samples)).all()
    assert checkerboard_log_prob(torch.tensor([[1.0, -1.0], [4.5, 0.5]])).isinf().all()  # white; outside


@pytest.mark.parametrize(
    "name, std, has_log_prob",
    [
        ("8gaussians", math.sqrt(4 + EIGHT_GAUSSIANS_STD**2), True),  # centres at radius 2 sqrt(2)
        ("checkerboard", 8 / math.sqrt(12), True),  # both marginals uniform on [-4, 4]
        ("swiss_roll", None, False),
        ("moons", None, False),
        ("rings", None, False),
    ],
)
def test_toy2d_samples(name, std, has_log_prob):
    dm = Toy2DDataModule(name=name)
    x = dm.sample(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and x.abs().max() < 5
    assert torch.equal(x, dm.sample(20000, torch.Generator().manual_seed(0)))
    if std is not None:
        torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.06, rtol=0)
        torch.testing.assert_close(x.std(0), torch.full((2,), std), atol=0.05, rtol=0)
    assert (dm.log_prob(x) is not None) == has_log_prob


# --- torchvision sets, offline ------------------------------------------------------------------


@pytest.mark.parametrize(
    "module_class, folder", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_mnist_offline(tmp_path, module_class, folder):
    fake = module_class.fake_data(tmp_path)
    assert (tmp_path / folder / "raw").is_dir() and fake.init_args == {"root": str(tmp_path)}
    dm = module_class(**fake.init_args, val_fraction=0.25, batch_size=4)
    assert dm.data_shape == (1, 32, 32) and dm.num_classes == 10
    dm.prepare_data()  # download=False: a no-op
    dm.setup()
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [30, 10, 10]
    check_item(dm.train_dataset[0], (1, 32, 32), True, 10)
    assert next(iter(dm.train_dataloader()))["x"].shape == (4, 1, 32, 32)


def _fake(module_class, root, monkeypatch) -> dict:
    fake = module_class.fake_data(root)
    for owner, name, value in fake.patches:
        monkeypatch.setattr(owner, name, value)
    return fake.init_args


def test_cifar10_offline(tmp_path, monkeypatch):
    dm = CIFAR10DataModule(**_fake(CIFAR10DataModule, tmp_path, monkeypatch), val_fraction=0.25)
    assert dm.data_shape == (3, 32, 32) and dm.random_flip
    dm.setup()
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [30, 10, 8]
    check_item(dm.val_dataset[0], (3, 32, 32), True, 10)
    # The deterministic eval transform gives back the stored pixels exactly.
    pixels = torch.as_tensor(dm.test_dataset.base.data[0]).permute(2, 0, 1) / 255 * 2 - 1
    torch.testing.assert_close(dm.test_dataset[0]["x"], pixels)


def test_celeba_offline(tmp_path, monkeypatch):
    dm = CelebADataModule(**_fake(CelebADataModule, tmp_path, monkeypatch), image_size=16)
    assert dm.data_shape == (3, 16, 16) and dm.num_classes == 0
    dm.setup()
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [16, 16, 16]
    check_item(dm.train_dataset[0], (3, 16, 16), False)


@pytest.mark.parametrize("module_class, path", [
    (MNISTDataModule, "MNIST/raw"),
    (FashionMNISTDataModule, "FashionMNIST/raw"),
    (CIFAR10DataModule, "cifar-10-batches-py"),
    (CelebADataModule, "celeba"),
])  # fmt: skip
def test_missing_files_error(tmp_path, module_class, path):
    dm = module_class(root=str(tmp_path))
    dm.prepare_data()  # download=False: must not try the network
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert "\n" not in message and dm.dataset_name in message and str(tmp_path / path) in message
    assert "pass --data.init_args.download true to download it, or place the files there" in message


def test_image_folder(tmp_path):
    for label, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (40, 30), (255 * label, i * 20, 0)).save(tmp_path / name / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, val_fraction=0.2, test_fraction=0.1)
    assert dm.num_classes == 2 and dm.class_names == ["cats", "dogs"] and dm.data_shape == (3, 16, 16)
    dm.setup()
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [14, 4, 2]
    labels = {dm.train_dataset[i]["y"].item() for i in range(14)}
    assert labels == {0, 1}
    check_item(dm.test_dataset[0], (3, 16, 16), True, 2)
    grey = ImageFolderDataModule(root=str(tmp_path), image_size=8, num_channels=1)
    assert grey.train_dataset[0]["x"].shape == (1, 8, 8)


def test_flat_image_folder_is_unlabelled(tmp_path):
    for i in range(10):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_fraction=0.2, test_fraction=0.0)
    assert dm.num_classes == 0 and dm.data_shape == (3, 8, 8)
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset)] == [8, 2]
    check_item(dm.train_dataset[0], (3, 8, 8), False, 0)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolderDataModule(root=str(tmp_path / "missing"))
    (tmp_path / "empty_class").mkdir()
    # a class folder without images; a flat folder without any
    for root in (tmp_path, tmp_path / "empty_class"):
        with pytest.raises(FileNotFoundError, match="holds no images") as info:
            ImageFolderDataModule(root=str(root)).setup()
        assert "download" not in str(info.value)
    with pytest.raises(ValueError, match="num_channels=2"):
        ImageFolderDataModule(root=str(tmp_path), num_channels=2)
