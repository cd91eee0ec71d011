"""LightningModules, one file per method."""

from lit_gen.methods.base import GenerativeModule, SampleOutput
from lit_gen.methods.ddpm import DDPM
from lit_gen.methods.flow import NormalizingFlow
from lit_gen.methods.iddpm import ImprovedDDPM

__all__ = ["DDPM", "GenerativeModule", "ImprovedDDPM", "NormalizingFlow", "SampleOutput"]
