"""Built-in training problems, selectable by name (``sdenet problems`` lists them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._problem import Problem

_ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "erf": jax.scipy.special.erf,
    "linear": lambda z: z,
    "softplus": jax.nn.softplus,
}


def _init_mlp(key, sizes, parametrisation):
    """Weights of an MLP with layer sizes ``sizes``; NTK: W ~ N(0,1), scaled in apply."""
    params = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        wkey = jax.random.fold_in(key, k)
        w = jax.random.normal(wkey, (n_in, n_out))
        if parametrisation == "standard":
            w = w / math.sqrt(n_in)
        params.append({"w": w, "b": jnp.zeros((n_out,))})
    return params


def make_mlp_apply(activation: str, parametrisation: str):
    """``apply(params, x)`` of a fully connected network.

    Standard parametrisation: h_{l+1} = φ(h_l W_l + b_l), W_l ~ N(0, 1/n_l).
    NTK parametrisation:      h_{l+1} = φ(h_l W_l / √n_l + b_l), W_l ~ N(0, 1).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"--activation {activation!r} is not known; choose one of "
            f"{sorted(_ACTIVATIONS)}."
        )
    if parametrisation not in ("standard", "ntk"):
        raise ValueError(
            f"--parametrisation {parametrisation!r} must be 'standard' or 'ntk'."
        )
    phi = _ACTIVATIONS[activation]

    def apply(params, x):
        h = x
        for k, layer in enumerate(params):
            w = layer["w"]
            if parametrisation == "ntk":
                w = w / math.sqrt(w.shape[0])
            h = h @ w + layer["b"][None, :]
            if k < len(params) - 1:
                h = phi(h)
        return h[:, 0]

    return apply


def _split(x, y, n_train, n_test):
    test = slice(n_train, n_train + n_test)
    return x[:n_train], y[:n_train], x[test], y[test]


def linear(n_train=64, n_test=64, dim=8, label_noise=0.5, seed=0, **_):
    """Linear regression f = x·w + b: linear in the weights (the isotropic SDE is OU)."""
    key = jax.random.key(seed)
    kx, kw, kn = jax.random.split(key, 3)
    n = n_train + n_test
    x = jax.random.normal(kx, (n, dim))
    w_true = jax.random.normal(kw, (dim,)) / math.sqrt(dim)
    y = x @ w_true + label_noise * jax.random.normal(kn, (n,))

    def apply(params, x):
        return x @ params["w"] + params["b"]

    params = {"w": jnp.zeros((dim,)), "b": jnp.zeros(())}
    return Problem(
        apply, params, *_split(x, y, n_train, n_test), name="linear",
        config=dict(n_train=n_train, n_test=n_test, dim=dim,
                    label_noise=label_noise, seed=seed),
    )


def _sine_data(key, n_train, n_test, label_noise):
    kx, kt, kn = jax.random.split(key, 3)
    x_train = jax.random.uniform(kx, (n_train, 1), minval=-2.0, maxval=2.0)
    x_test = jnp.linspace(-2.5, 2.5, n_test)[:, None] if n_test else x_train[:0]
    y_train = jnp.sin(2.0 * x_train[:, 0]) + label_noise * jax.random.normal(
        kn, (n_train,)
    )
    y_test = jnp.sin(2.0 * x_test[:, 0])
    return x_train, y_train, x_test, y_test


def random_features(n_train=32, n_test=32, width=64, activation="tanh",
                    label_noise=0.1, seed=0, **_):
    """Sine regression with a frozen random tanh layer and a trained linear readout."""
    key = jax.random.key(seed)
    kd, kf, kb = jax.random.split(key, 3)
    x_train, y_train, x_test, y_test = _sine_data(kd, n_train, n_test, label_noise)
    w_feat = 2.0 * jax.random.normal(kf, (1, width))
    b_feat = jax.random.normal(kb, (width,))
    phi = _ACTIVATIONS[activation]

    def apply(params, x):
        return phi(x @ w_feat + b_feat[None, :]) @ params["readout"] / math.sqrt(width)

    params = {"readout": jnp.zeros((width,))}
    return Problem(
        apply, params, x_train, y_train, x_test, y_test, name="random-features",
        config=dict(n_train=n_train, n_test=n_test, width=width,
                    activation=activation, label_noise=label_noise, seed=seed),
    )


def mlp_sine(n_train=32, n_test=32, width=16, depth=1, activation="tanh",
             parametrisation="standard", label_noise=0.1, seed=0, **_):
    """1-D sine regression with an MLP (``depth`` hidden layers of ``width`` units)."""
    key = jax.random.key(seed)
    kd, kp = jax.random.split(key)
    x_train, y_train, x_test, y_test = _sine_data(kd, n_train, n_test, label_noise)
    apply = make_mlp_apply(activation, parametrisation)
    params = _init_mlp(kp, [1] + [width] * depth + [1], parametrisation)
    return Problem(
        apply, params, x_train, y_train, x_test, y_test, name="mlp-sine",
        config=dict(n_train=n_train, n_test=n_test, width=width, depth=depth,
                    activation=activation, parametrisation=parametrisation,
                    label_noise=label_noise, seed=seed),
    )


def teacher_student(n_train=64, n_test=64, dim=4, width=16, depth=1,
                    teacher_width=8, activation="tanh", parametrisation="standard",
                    label_noise=0.1, seed=0, **_):
    """A random MLP teacher labels Gaussian inputs (plus noise); an MLP student learns."""
    key = jax.random.key(seed)
    kx, kt, kp, kn = jax.random.split(key, 4)
    n = n_train + n_test
    x = jax.random.normal(kx, (n, dim))
    apply = make_mlp_apply(activation, parametrisation)
    teacher = _init_mlp(kt, [dim, teacher_width, 1], parametrisation)
    y = apply(teacher, x) + label_noise * jax.random.normal(kn, (n,))
    params = _init_mlp(kp, [dim] + [width] * depth + [1], parametrisation)
    return Problem(
        apply, params, *_split(x, y, n_train, n_test), name="teacher-student",
        config=dict(n_train=n_train, n_test=n_test, dim=dim, width=width,
                    depth=depth, teacher_width=teacher_width, activation=activation,
                    parametrisation=parametrisation, label_noise=label_noise,
                    seed=seed),
    )


def diabetes(n_train=342, n_test=100, width=16, depth=1, activation="tanh",
             parametrisation="standard", seed=0, **_):
    """scikit-learn's bundled diabetes data (442 patients, 10 features), standardised."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = x[perm], y[perm]
    if n_train + n_test > len(y):
        raise ValueError(
            f"diabetes has {len(y)} points; --n-train {n_train} + --n-test {n_test} "
            "is too many."
        )
    x = (x - x[:n_train].mean(0)) / x[:n_train].std(0)
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    x, y = jnp.asarray(x), jnp.asarray(y)
    apply = make_mlp_apply(activation, parametrisation)
    params = _init_mlp(jax.random.key(seed), [10] + [width] * depth + [1],
                       parametrisation)
    return Problem(
        apply, params, *_split(x, y, n_train, n_test), name="diabetes",
        config=dict(n_train=n_train, n_test=n_test, width=width, depth=depth,
                    activation=activation, parametrisation=parametrisation,
                    seed=seed),
    )


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Problem]
    summary: str


PROBLEMS: dict[str, _Entry] = {
    "linear": _Entry(linear, "linear regression, 8 Gaussian features, 64 points "
                     "(linear in weights: isotropic SDE is an exact OU process)"),
    "random-features": _Entry(random_features, "sine regression with a frozen random "
                              "tanh layer of 64 features, trained readout"),
    "mlp-sine": _Entry(mlp_sine, "1-D sine regression, MLP 1-16-1 tanh, 32 points"),
    "teacher-student": _Entry(teacher_student, "4-D inputs labelled by a random "
                              "MLP teacher plus noise, MLP student 4-16-1"),
    "diabetes": _Entry(diabetes, "scikit-learn's bundled diabetes data (10 features, "
                       "342 train / 100 test), MLP 10-16-1"),
}


def get_problem(name: str, **options) -> Problem:
    """Build the built-in problem ``name``; ``options`` override its defaults.

    Options that a problem does not take are ignored (e.g. ``width`` for ``linear``).
    Options set to None keep the default.
    """
    if name not in PROBLEMS:
        raise ValueError(
            f"--problem {name!r} is not a built-in problem; choose one of "
            f"{', '.join(PROBLEMS)} (see `sdenet problems`)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    for key in ("n_train", "width", "depth", "dim"):
        if key in options and int(options[key]) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be ≥ 1, got {options[key]}.")
    if "n_test" in options and int(options["n_test"]) < 0:
        raise ValueError(f"--n-test must be ≥ 0, got {options['n_test']}.")
    return PROBLEMS[name].build(**options)
