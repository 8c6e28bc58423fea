"""Strict test settings: float64, no silent rank promotion, warnings are errors
(see pyproject). Problems are built once per session so jitted code is shared."""

import functools

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@functools.cache
def cached_problem(name, **options):
    import sdenet

    return sdenet.get_problem(name, **options)


@pytest.fixture(scope="session")
def linear_problem():
    return cached_problem("linear")


@pytest.fixture(scope="session")
def tiny_mlp():
    return cached_problem("mlp-sine", n_train=6, n_test=4, width=3)
