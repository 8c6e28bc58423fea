import sdenet

PUBLIC = {
    "AbstractNoise", "DivergenceError", "closure", "ClosureDomainWarning",
    "trained_weights", "FitDiagnosticWarning", "write_posterior", "fit", "LogError", "Run",
    "read_logs", "fit_trajectory", "em_transition_logpdf", "ou_transition_logpdf", "Isotropic", "Layerwise", "Minibatch",
    "Observables", "PROBLEMS", "Problem", "config_of", "get_problem", "make_schedule",
    "read_netcdf", "sgd", "simulate", "versions", "write_netcdf",
}


def test_public_names_are_pinned():
    names = {n for n in dir(sdenet) if not n.startswith("_")}
    assert names == PUBLIC, names ^ PUBLIC
