"""Noise models of the SGD SDE  dθ = −η ∇L dt + η D(θ) dW  (time in SGD steps).

| model        | D Dᵀ                                  | parameters            |
|--------------|---------------------------------------|-----------------------|
| `Isotropic`  | σ² I                                  | σ                     |
| `Layerwise`  | diag(σ_l² on the weights of layer l)  | σ_l per layer         |
| `Minibatch`  | s · κ Σ(θ) / B  (exact SGD covariance)| B, s, sampling scheme |

with Σ(θ) = (1/N) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ and κ = (N − B)/(N − 1) for batches drawn
without replacement (DESIGN §1–2).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class AbstractNoise(eqx.Module):
    """A noise model: the diffusion D(θ) of the SGD SDE."""

    @abc.abstractmethod
    def check(self, problem) -> None:
        """Raise ValueError if the model does not fit ``problem``."""

    @abc.abstractmethod
    def to_config(self) -> dict:
        """A JSON-serialisable description."""

    @property
    def additive(self) -> bool:
        """True when D does not depend on θ (higher-order additive-noise solvers apply)."""
        return False


class Isotropic(AbstractNoise):
    """D = σ I: the paper's noise coefficient σ on every weight."""

    sigma: float

    def __check_init__(self):
        s = self.sigma
        if isinstance(s, (int, float)) and not (np.isfinite(s) and s >= 0):
            raise ValueError(f"--sigma must be a finite number ≥ 0, got {self.sigma}.")

    def check(self, problem) -> None:
        pass

    def to_config(self) -> dict:
        return {"model": "isotropic", "sigma": float(self.sigma)}

    @property
    def additive(self) -> bool:
        return True

    def diagonal(self, problem) -> Float[Array, " P"]:
        """The diagonal of D (length P)."""
        return jnp.full((problem.n_params,), self.sigma, dtype=problem.theta0.dtype)


class Layerwise(AbstractNoise):
    """D = diag(σ_l) on the weights of layer l (one σ per top-level params entry)."""

    sigmas: tuple

    def __init__(self, sigmas):
        sigmas = tuple(float(s) for s in np.ravel(np.asarray(sigmas, dtype=float)))
        for s in sigmas:
            if not (np.isfinite(s) and s >= 0):
                raise ValueError(f"--sigma values must be finite and ≥ 0, got {sigmas}.")
        if not sigmas:
            raise ValueError("Layerwise noise needs at least one σ.")
        self.sigmas = sigmas

    def check(self, problem) -> None:
        if len(self.sigmas) != problem.n_layers:
            raise ValueError(
                f"Layerwise noise got {len(self.sigmas)} σ values but problem "
                f"{problem.name!r} has {problem.n_layers} layers (parameter groups); "
                f"pass exactly {problem.n_layers} values to --sigma."
            )

    def to_config(self) -> dict:
        return {"model": "layerwise", "sigmas": list(self.sigmas)}

    @property
    def additive(self) -> bool:
        return True

    def diagonal(self, problem) -> Float[Array, " P"]:
        s = jnp.asarray(self.sigmas, dtype=problem.theta0.dtype)
        return s[problem.layer_ids()]


class Minibatch(AbstractNoise):
    """The exact covariance of SGD's minibatch noise: D Dᵀ = s κ Σ(θ) / B.

    ``sampling="iid"``: a fresh batch of B distinct points each step; the centred
    counting process is Brownian. ``sampling="reshuffle"``: each epoch is a new
    permutation cut into N/B batches (PyTorch ``DataLoader(shuffle=True)``); the
    counting process is a Brownian bridge pinned to zero at every epoch end
    (DESIGN §2). ``scale`` multiplies the covariance (s = 1 is SGD).
    """

    batch_size: int = eqx.field(static=True)
    scale: float = 1.0
    sampling: str = eqx.field(static=True, default="iid")

    def __check_init__(self):
        if int(self.batch_size) < 1:
            raise ValueError(f"--batch-size must be ≥ 1, got {self.batch_size}.")
        if self.sampling not in ("iid", "reshuffle"):
            raise ValueError(
                f"--sampling must be 'iid' or 'reshuffle', got {self.sampling!r}."
            )
        s = self.scale
        if isinstance(s, (int, float)) and not (np.isfinite(s) and s >= 0):
            raise ValueError(f"--scale must be finite and ≥ 0, got {self.scale}.")

    def check(self, problem) -> None:
        n = problem.n_train
        if self.batch_size > n:
            raise ValueError(
                f"--batch-size {self.batch_size} exceeds the {n} training points of "
                f"problem {problem.name!r}."
            )
        if self.sampling == "reshuffle" and n % self.batch_size:
            raise ValueError(
                f"sampling='reshuffle' needs the batch size to divide N: {n} points "
                f"are not a whole number of batches of {self.batch_size}; pick a "
                "divisor of N (the last, smaller batch of drop_last=False is not "
                "modelled)."
            )

    def to_config(self) -> dict:
        return {"model": "minibatch", "batch_size": int(self.batch_size),
                "scale": float(self.scale), "sampling": self.sampling}

    def kappa(self, n: int) -> float:
        """κ = (N − B)/(N − 1): finite-population factor of sampling without replacement."""
        return (n - self.batch_size) / (n - 1)

    def epoch_length(self, n: int) -> int:
        """E = N / B steps per epoch."""
        return n // self.batch_size

    def counting_scale(self, n: int) -> float:
        """a with dM = a Π dW (iid) or dM = a_bridge Π dβ (reshuffle).

        iid: Cov ΔM = (B/N)(1 − B/N) N/(N − 1) Π per step, so a² = B(N − B)/(N(N − 1)).
        reshuffle: Var M_i(t) = (B/N) t (1 − t/E), matched by a² = B/(N − 1) times a
        standard Brownian bridge on [0, E] projected by Π = I − 11ᵀ/N.
        """
        b = self.batch_size
        if self.sampling == "iid":
            return float(np.sqrt(b * (n - b) / (n * (n - 1))))
        return float(np.sqrt(b / (n - 1)))


def noise_from_config(cfg: dict) -> AbstractNoise:
    """Rebuild a noise model from ``to_config()`` output."""
    model = cfg.get("model")
    if model == "isotropic":
        return Isotropic(cfg["sigma"])
    if model == "layerwise":
        return Layerwise(cfg["sigmas"])
    if model == "minibatch":
        return Minibatch(cfg["batch_size"], cfg.get("scale", 1.0),
                         cfg.get("sampling", "iid"))
    raise ValueError(f"unknown noise model {model!r}")
