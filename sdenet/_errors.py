"""Errors a user can act on."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """A run whose train loss became NaN/inf.

    Carries the first saved step at which the loss was not finite and, where known,
    the gradient-descent stability bound η < 2/λ_max of the problem at its initial
    weights.
    """

    def __init__(self, step: float, hint: dict | None = None):
        self.step = step
        self.hint = hint if hint is not None else {}
        msg = f"the run diverged: the train loss is not finite by step {step:g}"
        lr = self.hint.get("lr")
        lam = self.hint.get("lambda_max")
        if lam is not None and lam > 0:
            bound = 2.0 / lam
            msg += (
                f"; the stability bound of gradient descent at the initial weights is "
                f"lr < 2/λ_max = {bound:.4g} (λ_max = {lam:.4g})"
            )
            if lr is not None:
                msg += f" and lr = {lr:g}"
        msg += "; lower --lr (or the noise level) and run again."
        super().__init__(msg)
