"""Same seed => identical numbers; sharded over 2 CPU devices => the same numbers."""

import os
import subprocess
import sys

import jax
import numpy as np
import xarray as xr

import sdenet

SCRIPT = """
import sys, jax
jax.config.update("jax_enable_x64", True)
import sdenet
assert len(jax.devices()) == int(sys.argv[2]), jax.devices()
p = sdenet.get_problem("mlp-sine", n_train=8, n_test=4, width=4)
obs = sdenet.Observables(weights=True)
a = sdenet.simulate(p, sdenet.Minibatch(2, sampling="reshuffle"), 0.1, 20, 4,
                    jax.random.key(3), save_every=5, observables=obs, progress=False)
b = sdenet.sgd(p, 2, 0.1, 20, 4, jax.random.key(3), save_every=5, observables=obs,
               progress=False)
sdenet.write_netcdf(a, sys.argv[1] + "-sde.nc")
sdenet.write_netcdf(b, sys.argv[1] + "-sgd.nc")
"""


def test_same_seed_same_numbers(tiny_mlp):
    run = [sdenet.simulate(tiny_mlp, sdenet.Isotropic(0.05), 0.1, 20, 3, jax.random.key(5),
                           save_every=10, progress=False) for _ in range(2)]
    xr.testing.assert_identical(run[0], run[1])
    other = sdenet.simulate(tiny_mlp, sdenet.Isotropic(0.05), 0.1, 20, 3, jax.random.key(6),
                            save_every=10, progress=False)
    assert not np.allclose(other.train_loss.values[:, -1], run[0].train_loss.values[:, -1])


def test_path_i_does_not_depend_on_ensemble_size(tiny_mlp):
    small = sdenet.simulate(tiny_mlp, sdenet.Minibatch(2), 0.1, 10, 2, jax.random.key(5),
                            save_every=5, progress=False)
    big = sdenet.simulate(tiny_mlp, sdenet.Minibatch(2), 0.1, 10, 5, jax.random.key(5),
                          save_every=5, progress=False)
    np.testing.assert_allclose(small.train_loss.values, big.train_loss.values[:2],
                               rtol=1e-12)


def test_sharded_equals_unsharded(tmp_path):
    outs = {}
    for devices in (1, 2):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
        prefix = str(tmp_path / f"d{devices}")
        subprocess.run([sys.executable, "-c", SCRIPT, prefix, str(devices)], env=env,
                       check=True, timeout=300)
        outs[devices] = prefix
    for kind in ("sde", "sgd"):
        one = xr.load_dataset(outs[1] + f"-{kind}.nc")
        two = xr.load_dataset(outs[2] + f"-{kind}.nc")
        for name in one.data_vars:
            np.testing.assert_allclose(one[name].values, two[name].values, rtol=1e-12,
                                       atol=1e-14, err_msg=f"{kind} {name}")
