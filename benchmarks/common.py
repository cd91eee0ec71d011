"""Helpers shared by the benchmark scripts: the digits DDPM of experiments/ddpm/digits.yaml, built in
Python."""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch

from lit_gen.data import DigitsDataModule
from lit_gen.methods import DDPM
from lit_gen.nets import UNet

DIGITS_NET = dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(4,))


def digits_ddpm(**net_overrides) -> tuple[DDPM, DigitsDataModule]:
    data = DigitsDataModule(image_size=16, batch_size=128)
    model = DDPM(
        data_shape=data.data_shape,
        num_classes=data.num_classes,
        net=partial(UNet, **{**DIGITS_NET, **net_overrides}),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
        ema_decay=0.999,
    )
    return model, data


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
