"""Pure-torch score-based modelling (Song & Ermon 2019; Song et al. 2021): DSM losses, the solver-owned
samplers and the probability-flow ODE likelihood (no Lightning imports). The SDEs and the model function live
in lit_gen.process and are re-exported here."""

from lit_gen.process.sde import SDE, SDES, VESDE, VPSDE, DiscreteVPSDE, SubVPSDE, make_sde
from lit_gen.score.likelihood import divergence, ode_bits_per_dim, ode_log_likelihood
from lit_gen.score.losses import ImportanceTime, dsm_loss
from lit_gen.score.model import ScoreModel
from lit_gen.score.solvers import DETERMINISTIC, SOLVERS, make_solver, solve, solver_options

__all__ = [
    "DETERMINISTIC", "SDE", "SDES", "SOLVERS", "DiscreteVPSDE", "ImportanceTime", "ScoreModel", "SubVPSDE",
    "VESDE",
    "VPSDE", "divergence", "dsm_loss", "make_sde", "make_solver", "ode_bits_per_dim", "ode_log_likelihood",
    "solve",
    "solver_options",
]
