"""The model function of a score network: :class:`lit_gen.process.ModelFunction` with the signature score
models have always had (the network sees the model time; an optional classifier gradient)."""

from __future__ import annotations

from lit_gen.process.guidance import ClassifierShift
from lit_gen.process.model import ModelFunction, NetFn, on_model_time
from lit_gen.process.prediction import OutputLayout
from lit_gen.process.sde import SDE


class _Gradient:
    """A bare gradient function (x, model_time) -> s grad log p(y | x) in :class:`ClassifierShift`'s place."""

    def __init__(self, gradient) -> None:
        self.gradient = gradient


class ScoreModel(ModelFunction):
    """The model function of ``net(x, model_time)`` trained on ``sde``.

    Args:
        net: ``net(x, model_time)`` with ``model_time = sde.model_time(t)`` (B,).
        sde: the forward process.
        prediction_type: ``eps`` (score = -eps / sigma, NCSNv2's output scaling), ``x0``, ``v`` or ``score``.
        learned_variance: the output has 2C channels (Improved DDPM); the first C are the prediction.
        clip_denoised: see :class:`~lit_gen.process.ModelFunction`.
        guidance: an extra score term, s grad log p(y | x_t) of a noisy classifier (Song et al. 2021, Eq. 14),
            called with the model time.
    """

    def __init__(self, net: NetFn, sde: SDE, prediction_type: str = "eps", learned_variance: bool = False,
                 clip_denoised: bool = False, guidance=None) -> None:
        layout = OutputLayout(prediction_type, learned_variance)
        fn = on_model_time(net, sde)
        if guidance is not None:
            fn = ClassifierShift(fn, sde, layout, _Gradient(guidance))
        super().__init__(fn, sde, layout, clip_denoised)
