"""Turning samples into pictures and files: image grids, 2-D scatter plots, ADM-format npz."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from lit_gen.files import atomic_write


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1] (clamped)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), as OpenAI's ADM evaluator reads."""
    return (to_unit(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1]."""
    return make_grid(to_unit(x).cpu(), nrow=nrow or math.ceil(math.sqrt(x.shape[0])), padding=1,
                     pad_value=0.5)


def labelled_grid(x: torch.Tensor, row_labels: list[str]) -> np.ndarray:
    """:func:`image_grid` with one row per label (``len(x) / len(row_labels)`` images each), the label written
    left of its row, pixels kept exact (scaled up by a whole factor when rows are lower than the text); uint8
    (H, W, 3)."""
    from PIL import Image, ImageDraw, ImageFont

    per_row = len(x) // len(row_labels)
    # (H, W, 3): make_grid gives RGB
    grid = (image_grid(x, per_row).permute(1, 2, 0) * 255).round().byte().numpy()
    row_height = x.shape[-2] + 1  # image_grid pads by 1
    scale = max(1, math.ceil(12 / row_height))
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    font = ImageFont.load_default()
    margin = 6 + max(int(font.getbbox(label)[2]) for label in row_labels)
    canvas = Image.new("RGB", (image.width + margin, image.height), (255, 255, 255))
    canvas.paste(image, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels):
        draw.text((3, r * row_height * scale + 1), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _figure(size: tuple[float, float], columns: int = 0):
    """A matplotlib ``Figure`` on its own Agg canvas and its axes (a row of ``columns`` when > 0), made
    without pyplot: no global figure registry, and the user's matplotlib backend is left as it is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig, (fig.subplots(1, columns, squeeze=False) if columns else fig.subplots())


def scatter_figure(points: torch.Tensor, reference: torch.Tensor | None = None, title: str = "",
                   limit: float = 5.0):
    """A matplotlib figure of 2-D samples, over reference data if given."""
    fig, ax = _figure((4, 4))
    if reference is not None:
        ref = reference.detach().float().cpu()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="lightgray", label="data")
    pts = points.detach().float().cpu()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:blue", label="samples")
    outside = int((~torch.isfinite(pts) | (pts.abs() > limit)).any(1).sum())
    if outside:  # the axes stay fixed (plots compare across steps): say what they do not show
        title = f"{title}\n{outside} of {len(pts)} outside [-{limit:g}, {limit:g}]^2"
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", title=title)
    ax.legend(loc="upper right", fontsize=6)
    fig.tight_layout()
    return fig


def quiver_figure(points: torch.Tensor, vectors: torch.Tensor, reference: torch.Tensor | None = None,
                  title: str = "",
                  limit: float = 5.0):
    """A matplotlib quiver plot of a 2-D vector field (a score field) at ``points`` (N, 2), over reference
    data."""
    fig, ax = _figure((4, 4))
    if reference is not None:
        ref = reference.detach().float().cpu()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="lightgray")
    pts, vec = points.detach().float().cpu(), vectors.detach().float().cpu()
    ax.quiver(pts[:, 0], pts[:, 1], vec[:, 0], vec[:, 1], color="tab:red", angles="xy")
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", title=title)
    fig.tight_layout()
    return fig


def density_figure(panels: list[tuple[str, np.ndarray]], limit: float, title: str = ""):
    """Side-by-side heatmaps of 2-D densities, each an (N, N) array of p on the grid
    [-limit, limit]^2 (rows: y, columns: x), e.g. data histogram, model density, true density."""
    fig, axes = _figure((3.2 * len(panels), 3.4), len(panels))
    for ax, (name, density) in zip(axes[0], panels, strict=True):
        ax.imshow(density, origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
        ax.set(title=name, aspect="equal")
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def captioned_grid(x: torch.Tensor, captions: list[str], scores: torch.Tensor | None = None) -> np.ndarray:
    """One row per run of equal consecutive captions (a prompt's images), the prompt above its row and each
    image's score under it when given; uint8 (H, W, 3). Laid out by hand (no tight_layout, which shrinks the
    images to fit long captions): every image is 1.2 inches (120 px) wide, nothing is drawn over it."""
    rows: list[list[int]] = []
    for i, caption in enumerate(captions):
        if rows and captions[rows[-1][0]] == caption:
            rows[-1].append(i)
        else:
            rows.append([i])
    columns = max(len(r) for r in rows)
    cell, pad, caption_h, score_h = 1.2, 0.1, 0.25, 0.2 if scores is not None else 0.0
    longest = max(len(captions[r[0]]) for r in rows)
    width = max(columns * (cell + pad) + pad, 0.065 * longest + 2 * pad)  # ~0.065 in a character at 8 pt
    row_h = caption_h + cell + score_h
    height = len(rows) * row_h + pad
    fig, _ = _figure((width, height))
    fig.clear()
    images = to_unit(x).permute(0, 2, 3, 1).cpu().numpy()
    for r, row in enumerate(rows):
        top = height - pad - r * row_h  # inches from the bottom
        fig.text(pad / width, (top - caption_h / 2) / height, captions[row[0]], fontsize=8, va="center")
        for c, index in enumerate(row):
            ax = fig.add_axes([(pad + c * (cell + pad)) / width, (top - caption_h - cell) / height,
                               cell / width, cell / height])
            ax.axis("off")
            image = images[index]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest", aspect="auto")
            if scores is not None:
                ax.text(0.5, -0.02, f"{float(scores[index]):.3f}", transform=ax.transAxes, fontsize=7,
                        ha="center", va="top")
    return figure_to_array(fig)


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure (drawn on its own Agg canvas) to a uint8 (H, W, 3) array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(array_hwc: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    atomic_write(path, lambda file: Image.fromarray(array_hwc).save(file, format="PNG"))


def save_npz(path: str | Path, samples: np.ndarray, labels: np.ndarray | None = None,
             **named: np.ndarray) -> None:
    """ADM evaluator format: ``arr_0`` the samples, ``arr_1`` the labels if any, and ``named`` arrays (e.g.
    ``captions``). Written atomically."""
    arrays = [samples] if labels is None else [samples, labels]
    atomic_write(path, lambda file: np.savez(file, *arrays, **named))


def read_uint8_images(path: Path, flag: str, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 (N, H, W, C) images of ``arr_0`` in the npz ``path`` (as ``samples.npz`` holds them), checked
    against a model's ``shape`` (C, H, W); ``flag`` names the option in the one-line errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{flag} file not found: {str(path)!r}")
    images = np.load(path)["arr_0"]
    expected = (*shape[1:], shape[0])
    if images.dtype != np.uint8 or images.shape[1:] != expected:
        raise ValueError(f"{flag} expects uint8 images of shape N x {expected}, got {images.dtype} "
                         f"{images.shape}")
    return images
