"""The forward SDEs live in the noise-process layer, :mod:`lit_gen.process.sde`; this name stays for imports
written before it moved."""

from lit_gen.process.sde import (  # noqa: F401
    SDE,
    SDES,
    VESDE,
    VPSDE,
    DiscreteVPSDE,
    SubVPSDE,
    make_sde,
    sigma_max_from_data,
)
