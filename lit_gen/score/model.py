"""The model function of a score network: :class:`lit_gen.process.ModelFunction` of ``net(x, model_time)``,
the signature score models' tests, benchmarks and likelihood have always used."""

from __future__ import annotations

from lit_gen.process.model import ModelFunction, NetFn, on_model_time
from lit_gen.process.prediction import OutputLayout
from lit_gen.process.sde import SDE


class ScoreModel(ModelFunction):
    """The model function of ``net(x, model_time)`` trained on ``sde``.

    Args:
        net: ``net(x, model_time)`` with ``model_time = sde.model_time(t)`` (B,).
        sde: the forward process.
        prediction_type: ``eps`` (score = -eps / sigma, NCSNv2's output scaling), ``x0``, ``v`` or ``score``.
        learned_variance: the output has 2C channels (Improved DDPM); the first C are the prediction.
        clip_denoised: see :class:`~lit_gen.process.ModelFunction`.
    """

    def __init__(self, net: NetFn, sde: SDE, prediction_type: str = "eps", learned_variance: bool = False,
                 clip_denoised: bool = False) -> None:
        super().__init__(on_model_time(net, sde), sde, OutputLayout(prediction_type, learned_variance),
                         clip_denoised)
