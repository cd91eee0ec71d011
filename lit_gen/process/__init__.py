"""The noise-process layer (pure torch, below ``diffusion/`` and ``score/``): the forward processes in
continuous time (VP, sub-VP, VE, and a DDPM checkpoint's discrete VP with the one map between its steps and
t), the parameterisations of a network's output, the model function every sampler calls, and guidance as
wrappers of that function."""

from lit_gen.process.guidance import (
    CFG,
    ClassifierFree,
    ClassifierGuidance,
    ClassifierShift,
    drop_labels,
    mean_shift,
)
from lit_gen.process.model import ModelFunction, OutputFn, at_steps, coefficients, model_time, on_model_time
from lit_gen.process.paths import PATHS, CosinePath, FlowPath, LinearPath, shift_times
from lit_gen.process.prediction import PREDICTIONS, OutputLayout, Prediction, PredictionType, make_prediction
from lit_gen.process.sde import SDE, SDES, VESDE, VPSDE, DiscreteVPSDE, SubVPSDE, make_sde
from lit_gen.process.velocity import VelocityPrediction

__all__ = [
    "CFG", "ClassifierFree", "ClassifierGuidance", "ClassifierShift", "CosinePath", "DiscreteVPSDE",
    "FlowPath", "LinearPath", "ModelFunction", "OutputFn", "OutputLayout", "PATHS", "PREDICTIONS",
    "Prediction", "PredictionType", "SDE", "SDES", "SubVPSDE", "VESDE", "VPSDE", "VelocityPrediction",
    "at_steps", "coefficients", "drop_labels", "make_prediction", "make_sde", "mean_shift", "model_time",
    "on_model_time", "shift_times",
]
