"""Check any score model against the score FPE and conservativity (issue 9).

Public API: `check_model` (the report), `ModelReport`, `load_model`, `to_score_fn` / `Param`
(eps / x0 / score parameterisations), `probe_model`, `parse_t_grid`, `data_sampler` /
`model_sampler` (x0 sources); `check_model_spec` / `write_report_files` run one
`scorefpe check --model` end to end.
"""

from scorefpe.modelcheck.compute import CheckMode, check_model, mean_se, parse_t_grid
from scorefpe.modelcheck.loading import LoadedModel, load_model, load_run_dir, model_dtype, probe_model
from scorefpe.modelcheck.params import Param, parse_param, score_to_output, to_score_fn
from scorefpe.modelcheck.report import QUANTITIES, ModelReport, Stat
from scorefpe.modelcheck.run import check_model_spec, write_report_files
from scorefpe.modelcheck.sources import data_sampler, model_sampler

__all__ = [
    "CheckMode",
    "LoadedModel",
    "ModelReport",
    "Param",
    "QUANTITIES",
    "Stat",
    "check_model",
    "check_model_spec",
    "data_sampler",
    "load_model",
    "load_run_dir",
    "mean_se",
    "model_dtype",
    "model_sampler",
    "parse_param",
    "parse_t_grid",
    "probe_model",
    "score_to_output",
    "to_score_fn",
    "write_report_files",
]
