"""Captioned data for text-to-image models, on files the tests make: an image folder with a captions file,
class-name captions of a labelled folder, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lit_gen.data import CaptionedImageFolderDataModule, ImageFolderDataModule
from lit_gen.data.base import dataset_captions


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((12, 12, 3), 20 * i, dtype=np.uint8)).save(folder / name)


def test_captioned_image_folder_items_and_errors(tmp_path):
    names = [f"{i}.png" for i in range(10)]
    _images(tmp_path, names)
    lines = [f"{n}\ta picture number {i}\n" for i, n in enumerate(names)]
    (tmp_path / "captions.tsv").write_text("".join(lines))
    dm = CaptionedImageFolderDataModule(root=str(tmp_path), image_size=8, batch_size=2, val_fraction=0.2,
                                        test_fraction=0.1)
    dm.setup()
    item = dm.train_dataset[0]
    assert item["x"].shape == (3, 8, 8) and item["caption"].startswith("a picture number")
    everything = sum((dataset_captions(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)), [])
    assert sorted(everything) == sorted(f"a picture number {i}" for i in range(10))
    # each caption belongs to its own image (pixel value 20 i)
    for split in (dm.train_dataset, dm.val_dataset):
        for j in range(len(split)):
            it = split[j]
            number = int(it["caption"].split()[-1])
            assert abs((it["x"][0, 0, 0].item() + 1) * 127.5 - 20 * number) < 1
    (tmp_path / "captions.tsv").write_text("0.png\ta\nmissing.png\tb\n")
    with pytest.raises(FileNotFoundError, match="captions.tsv:2: image 'missing.png' not found"):
        CaptionedImageFolderDataModule(root=str(tmp_path), image_size=8).setup()
    (tmp_path / "captions.tsv").write_text("0.png\t  \n")
    with pytest.raises(ValueError, match="captions.tsv:1: no caption for '0.png'"):
        CaptionedImageFolderDataModule(root=str(tmp_path), image_size=8).setup()
    with pytest.raises(FileNotFoundError, match="captions file not found"):
        CaptionedImageFolderDataModule(root=str(tmp_path), captions_file=str(tmp_path / "no.tsv"),
                                       image_size=8).setup()


def test_class_name_captions_of_a_labelled_folder(tmp_path):
    for cls in ("cat", "dog"):
        _images(tmp_path / cls, [f"{i}.png" for i in range(4)])
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, class_captions="a photo of a {}",
                               val_fraction=0.25,
                               test_fraction=0.0, batch_size=2)
    dm.setup()
    item = dm.train_dataset[0]
    assert item["caption"] == f"a photo of a {dm.class_names[int(item['y'])]}"
    assert set(dataset_captions(dm.train_dataset)) == {"a photo of a cat", "a photo of a dog"}
    with pytest.raises(ValueError, match="class_captions='a photo'"):
        ImageFolderDataModule(root=str(tmp_path), class_captions="a photo")
    unlabelled = tmp_path / "flat"
    _images(unlabelled, ["a.png"])
    with pytest.raises(ValueError, match="needs a labelled set"):
        ImageFolderDataModule(root=str(unlabelled), class_captions="a photo of a {}")
    plain = ImageFolderDataModule(root=str(unlabelled), image_size=8, val_fraction=0.0, test_fraction=0.0)
    plain.setup()
    with pytest.raises(ValueError, match="has no captions"):
        dataset_captions(plain.train_dataset)
