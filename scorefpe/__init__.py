"""scorefpe: check, measure and enforce the score Fokker-Planck equation (score FPE).

The public names a user needs; everything else lives in the submodules:
``scorefpe.sde``, ``scorefpe.data``, ``scorefpe.operators``, ``scorefpe.residuals``,
``scorefpe.modelcheck`` (`check_model`: the score-FPE report of any score model).
"""

from scorefpe.data.mixtures import GaussianMixture
from scorefpe.data.synthetic import get_dataset
from scorefpe.operators import (
    divergence,
    fp_operator,
    fp_residual,
    jacobian,
    jacobian_asymmetry_sq,
    jacobian_diagonal,
    jacobian_frobenius_sq,
    scalar_fp_residual,
    time_derivative,
)
from scorefpe.modelcheck import check_model
from scorefpe.sde import SDE, SubVPSDE, VESDE, VPSDE, make_sde

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "SDE",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "check_model",
    "divergence",
    "fp_operator",
    "fp_residual",
    "get_dataset",
    "jacobian",
    "jacobian_asymmetry_sq",
    "jacobian_diagonal",
    "jacobian_frobenius_sq",
    "make_sde",
    "scalar_fp_residual",
    "time_derivative",
]
