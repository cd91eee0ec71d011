"""LightningModules, one file per method."""

from lit_gen.methods.base import GenerativeModule, SampleOutput
from lit_gen.methods.clip import CLIP
from lit_gen.methods.dalle import DALLE
from lit_gen.methods.ddpm import DDPM
from lit_gen.methods.dvae import DiscreteVAE
from lit_gen.methods.flow import NormalizingFlow
from lit_gen.methods.iddpm import ImprovedDDPM
from lit_gen.methods.ncsn import NCSN
from lit_gen.methods.noisy_classifier import NoisyClassifier
from lit_gen.methods.score_sde import ScoreSDE

__all__ = ["CLIP", "DALLE", "DDPM", "NCSN", "DiscreteVAE", "GenerativeModule", "ImprovedDDPM",
           "NoisyClassifier", "NormalizingFlow", "SampleOutput",
           "ScoreSDE"]
