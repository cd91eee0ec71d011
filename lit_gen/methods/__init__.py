"""LightningModules, one file per method."""

from lit_gen.methods.autoencoder import Autoencoder
from lit_gen.methods.base import LitGenModule
from lit_gen.methods.clip import CLIP
from lit_gen.methods.dalle import DALLE
from lit_gen.methods.ddpm import DDPM
from lit_gen.methods.dvae import DiscreteVAE
from lit_gen.methods.flow import NormalizingFlow
from lit_gen.methods.flow_matching import FlowMatching
from lit_gen.methods.generative import Abilities, GenerativeModule, SampleOutput
from lit_gen.methods.iddpm import ImprovedDDPM
from lit_gen.methods.ncsn import NCSN
from lit_gen.methods.noisy_classifier import NoisyClassifier
from lit_gen.methods.score_sde import ScoreSDE

__all__ = [
    "Abilities", "Autoencoder", "CLIP", "DALLE", "DDPM", "DiscreteVAE", "FlowMatching", "GenerativeModule",
    "ImprovedDDPM", "LitGenModule", "NCSN", "NoisyClassifier", "NormalizingFlow", "SampleOutput",
    "ScoreSDE",
]
