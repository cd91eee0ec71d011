"""The one sampler assembly of the noise-process methods: typed options in, a guided model function and a
sampler of either protocol out (``assembly``), and the options' declaration (``options``)."""

from lit_gen.sampling.assembly import NoiseModel, check, deterministic_options, invert, sample
from lit_gen.sampling.options import SOLVER_KEYS, NoiseSampleOptions

__all__ = ["SOLVER_KEYS", "NoiseModel", "NoiseSampleOptions", "check", "deterministic_options", "invert",
           "sample"]
