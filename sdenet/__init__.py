"""sdenet: SGD as a stochastic differential equation in weight space.

Simulate SDE ensembles (diffrax) beside real SGD, propagate output moments
analytically, and infer effective noise from training trajectories and logs.
"""

from ._artefact import config_of as config_of
from ._artefact import read_netcdf as read_netcdf
from ._artefact import versions as versions
from ._artefact import write_netcdf as write_netcdf
from ._closure import closure as closure
from ._closure_second import ClosureDomainWarning as ClosureDomainWarning
from ._errors import DivergenceError as DivergenceError
from ._fit import FitDiagnosticWarning as FitDiagnosticWarning
from ._fit import write_posterior as write_posterior
from ._fit_logs import fit as fit
from ._infer_trajectory import em_transition_logpdf as em_transition_logpdf
from ._infer_trajectory import fit_trajectory as fit_trajectory
from ._infer_trajectory import ou_transition_logpdf as ou_transition_logpdf
from ._logs import LogError as LogError
from ._logs import Run as Run
from ._logs import read_logs as read_logs
from ._noise import AbstractNoise as AbstractNoise
from ._noise import Isotropic as Isotropic
from ._noise import Layerwise as Layerwise
from ._noise import Minibatch as Minibatch
from ._observables import Observables as Observables
from ._problem import Problem as Problem
from ._problems import PROBLEMS as PROBLEMS
from ._problems import get_problem as get_problem
from ._schedule import make_schedule as make_schedule
from ._sde import simulate as simulate
from ._sgd import sgd as sgd
from ._start import trained_weights as trained_weights

__version__ = "0.1.0"
