"""LightningModules, one file per method."""

from lit_gen.methods.base import GenerativeModule, SampleOutput
from lit_gen.methods.ddpm import DDPM

__all__ = ["DDPM", "GenerativeModule", "SampleOutput"]
