"""Plots leave the user's matplotlib alone; images go through each logger's own API, and a logger that cannot
store them is named once."""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_gen import image_logging
from lit_gen.image_logging import log_image


def test_plots_do_not_touch_pyplot_or_the_backend():
    code = (
        "import sys, matplotlib, torch; matplotlib.use('svg')\n"
        "from lit_gen.visual import density_figure, figure_to_array, quiver_figure, scatter_figure\n"
        "import numpy as np\n"
        "a = figure_to_array(scatter_figure(torch.randn(50, 2), torch.randn(50, 2), title='t'))\n"
        "b = figure_to_array(quiver_figure(torch.randn(9, 2), torch.randn(9, 2)))\n"
        "c = figure_to_array(density_figure([('p', np.ones((8, 8))), ('q', np.eye(8))], 4.0))\n"
        "assert a.shape == (400, 400, 3) and a.dtype == np.uint8 and a.std() > 0, a.shape\n"
        "assert b.shape == (400, 400, 3) and c.shape[2] == 3\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _ImageLogger:
    """A logger with its own image API, as W&B's: log_image(key, images, step)."""

    def __init__(self) -> None:
        self.calls = []

    def log_image(self, key, images, step=None):
        self.calls.append((key, images, step))


def test_images_go_through_each_loggers_api(tmp_path, monkeypatch):
    monkeypatch.setattr(image_logging, "_told", set())
    tb, own, csv = TensorBoardLogger(str(tmp_path)), _ImageLogger(), CSVLogger(str(tmp_path))
    trainer = SimpleNamespace(loggers=[tb, own, csv])
    grid = torch.rand(3, 10, 12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_image(trainer, "samples/grid", grid, 5)
        log_image(trainer, "samples/plot", np.zeros((6, 7, 3), np.uint8), 6)
    key, [image], step = own.calls[0]
    assert (key, step, image.shape, image.dtype) == ("samples/grid", 5, (10, 12, 3), np.uint8)
    np.testing.assert_array_equal(image, (grid.permute(1, 2, 0) * 255).round().byte().numpy())
    assert own.calls[1][1][0].shape == (6, 7, 3)
    told = [str(w.message) for w in caught if "cannot store images" in str(w.message)]
    assert len(told) == 1 and "CSVLogger" in told[0]  # said once, not silent, not per image
    tb.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb.log_dir).Reload()
    assert set(events.Tags()["images"]) == {"samples/grid", "samples/plot"}


def test_captioned_grid_shows_every_image_whole_and_large_under_its_prompt():
    """Solid images of distinct colours: each appears as a block of at least 110 x 110 pixels of its colour
    alone (no caption or score drawn over it), in its prompt's row, however long the prompt."""
    from lit_gen.visual import captioned_grid

    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
    x = colours[:, :, None, None].expand(-1, -1, 8, 8) * 2 - 1  # in [-1, 1]
    captions = ["a small red circle at the top left of the image, seen from above"] * 3 + ["a cross"] * 2
    for scores in (None, torch.arange(5.0)):
        grid = captioned_grid(x, captions, scores).astype(int)
        boxes = []
        for colour in (colours * 255).int().numpy():
            ys, xs = np.nonzero(np.abs(grid - colour).sum(-1) == 0)
            top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
            assert bottom - top >= 110 and right - left >= 110, (colour, bottom - top, right - left)
            block = grid[top + 1 : bottom, left + 1 : right]  # inside the image: its colour alone
            assert (np.abs(block - colour).sum(-1) == 0).all(), colour
            boxes.append((top, left))
        assert boxes[0][0] == boxes[1][0] == boxes[2][0] < boxes[3][0] == boxes[4][0]  # one row a prompt
        assert boxes[0][1] < boxes[1][1] < boxes[2][1] and boxes[3][1] == boxes[0][1]
