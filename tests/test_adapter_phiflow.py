"""zoracle.adapters.phiflow: the wake-flow solver, its cache and the solver-in-the-loop oracle."""

from __future__ import annotations

import pathlib
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("phi")
torch = pytest.importorskip("torch")

import zoracle as zo  # noqa: E402
from zoracle.adapters import phiflow as pf  # noqa: E402
from zoracle.testing import check_oracle  # noqa: E402

warnings.filterwarnings("ignore", module="phi")
warnings.filterwarnings("ignore", module="phiml")

TINY = pf.WakeFlow(nx=16, ny=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Downsampled fine trajectories on an 8x16 coarse grid (fine 16x32): a few seconds."""
    cache = tmp_path_factory.mktemp("wake-cache")
    return pf.reference_trajectories(TINY, [150.0, 400.0], factor=2, warmup=4, steps=6, cache_dir=cache)


def test_downsample_is_flux_conserving():
    """A coarse cell's divergence is the mean of the fine divergences it covers."""
    rng = np.random.default_rng(0)
    fine = pf.WakeFlow(nx=16, ny=32)
    vx = rng.standard_normal((2, 17, 32))
    vy = rng.standard_normal((2, 16, 32))
    cx, cy = pf.downsample(vx, vy, 4)
    assert cx.shape == (2, 5, 8) and cy.shape == (2, 4, 8)
    coarse = fine.coarsened(4)
    div_f = fine.divergence(vx, vy)
    div_c = coarse.divergence(cx, cy)
    block_mean = div_f.reshape(2, 4, 4, 8, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(div_c, block_mean, atol=1e-12)
    with pytest.raises(zo.ArgumentError, match="divisible"):
        pf.downsample(vx, vy, 3)


def test_step_is_finite_and_divergence_free_to_solver_tolerance():
    flow = TINY
    vx, vy = flow.initial(2)
    ox, oy = flow.simulate(vx, vy, [150.0, 600.0], 4)
    assert np.isfinite(ox).all() and np.isfinite(oy).all()
    div = flow.divergence(ox, oy)[:, flow.fluid_mask()]
    assert np.abs(div).max() < 10 * flow.tol
    # the initial state is not divergence-free: the projection did the work
    assert np.abs(flow.divergence(vx, vy)[:, flow.fluid_mask()]).max() > 100 * flow.tol


@pytest.mark.slow
def test_batched_simulation_equals_one_by_one():
    flow = TINY
    vx, vy = flow.initial(3)
    vx = vx + 0.05 * np.random.default_rng(1).standard_normal(vx.shape).astype(np.float32)
    re = [120.0, 300.0, 900.0]
    bx, by = flow.simulate(vx, vy, re, 2)
    for i in (0, 2):
        sx, sy = flow.simulate(vx[i:i + 1], vy[i:i + 1], re[i], 2)
        np.testing.assert_allclose(sx[0], bx[i], atol=10 * flow.tol)
        np.testing.assert_allclose(sy[0], by[i], atol=10 * flow.tol)


@pytest.mark.slow
def test_each_batch_entry_gets_its_own_diffusion_substeps():
    """Every entry used to diffuse with the sub-step count of the batch's lowest Re: on the
    default 128x256 fine grid a Re 600 run next to a Re 150 one was 5.1e-3 off after 3 steps
    (Re 20 here next to Re 2: 1.4e-3), and reference trajectories depended on the other Re."""
    flow = TINY
    vx, vy = flow.initial(3)
    vx = vx + 0.05 * np.random.default_rng(1).standard_normal(vx.shape).astype(np.float32)
    re = [2.0, 400.0, 20.0]
    assert [flow.substeps(r) for r in re] == [2, 1, 1] and flow.substeps(re) == 2
    bx, by = flow.simulate(vx, vy, re, 3)
    for i in range(3):
        sx, sy = flow.simulate(vx[i:i + 1], vy[i:i + 1], re[i], 3)
        # PhiFlow's CG stops a batch when every entry meets the smallest entry's tolerance, so
        # entries may differ below `tol`; here they agree to the bit
        np.testing.assert_allclose(bx[i], sx[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(by[i], sy[0], rtol=0, atol=1e-6)
    # the torch backend (FO-SOL) groups the entries the same way
    tx, _ = flow.simulate(torch.from_numpy(vx), torch.from_numpy(vy), re, 1)
    ox, _ = flow.simulate(torch.from_numpy(vx[2:]), torch.from_numpy(vy[2:]), re[2], 1)
    np.testing.assert_allclose(tx[2].numpy(), ox[0].numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_reference_of_one_reynolds_number_does_not_depend_on_the_others(tmp_path):
    both = pf.reference_trajectories(TINY, [2.0, 20.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    alone = pf.reference_trajectories(TINY, [20.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    np.testing.assert_allclose(both.vx[1], alone.vx[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(both.vy[1], alone.vy[0], rtol=0, atol=1e-6)


def test_reynolds_numbers_needing_too_many_substeps_are_refused():
    """The count grows like 1 / Re without bound: Re 0.001 asked 163,840 a step on the 128x256 grid."""
    vx, vy = TINY.initial(1)
    for call in (lambda: TINY.substeps(0.001), lambda: TINY.simulate(vx, vy, 0.001, 1),
                 lambda: pf.reference_trajectories(TINY, [300.0, 0.001], factor=2, steps=1, cache_dir="/nonexistent")):
        with pytest.raises(zo.ArgumentError, match=r"`re` = 0.001 needs 2560 explicit-diffusion sub-steps.*>= 0.00256"):
            call()
    assert TINY.substeps(0.0026) == 985


def test_nan_raises_an_error_naming_the_step():
    flow = TINY
    vx, vy = flow.initial(2)

    def poison(cx, cy, t):
        if t == 2:
            cx = cx.copy()
            cx[1, 3, 3] = np.nan
        return cx, cy

    with pytest.raises(pf.SimulationError, match=r"step 2 .*batch entries 1 of 2"):
        flow.simulate(vx, vy, [150.0, 150.0], 4, correct=poison)
    bad = vx.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(pf.SimulationError, match="step 5"):
        flow.simulate(bad, vy, 150.0, 1, start=5)


def test_arguments_are_validated():
    with pytest.raises(zo.ArgumentError, match="nx"):
        pf.WakeFlow(nx=2)
    with pytest.raises(zo.ArgumentError, match="Reynolds"):
        TINY.viscosity([100.0, -1.0])
    vx, vy = TINY.initial(1)
    with pytest.raises(zo.ArgumentError, match="do not match the grid"):
        TINY.simulate(vx[:, :-1], vy, 100.0, 1)
    # accepted silently, or a raw TypeError / ZeroDivisionError / broadcast error, before
    for kwargs, match in (({"max_iter": 0}, "max_iter"), ({"kick": float("nan")}, "kick"),
                          ({"center": (1.0, 2.0, 3.0)}, "center"), ({"center": (500.0, 500.0)}, "inside the domain"),
                          ({"radius": 1000.0}, "inside the domain"), ({"width": "a"}, "width")):
        with pytest.raises(zo.ArgumentError, match=match):
            pf.WakeFlow(**kwargs)
    with pytest.raises(zo.ArgumentError, match="`factor` must be an integer >= 1"):
        TINY.coarsened(0)
    with pytest.raises(zo.ArgumentError, match="one per batch entry"):
        TINY.simulate(vx, vy, [100.0, 200.0], 1)
    with pytest.raises(zo.ArgumentError, match="NumPy arrays or torch tensors"):
        TINY.simulate(vx.tolist(), vy, 100.0, 1)
    with pytest.raises(zo.ArgumentError, match="`batch` must be an integer >= 1"):
        TINY.initial(-1)


@pytest.mark.slow
def test_reference_cache_is_keyed_by_parameters(tmp_path):
    a = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    assert not a.cached and a.vx.shape == (1, 3, 9, 16) and a.vy.shape == (1, 3, 8, 16)
    b = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    assert b.cached and b.path == a.path
    np.testing.assert_array_equal(a.vx, b.vx)
    c = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=2, steps=2, cache_dir=tmp_path)
    assert not c.cached and c.path != a.path
    # one more warm-up step = one frame later (up to the pressure solve's warm start: tolerance)
    np.testing.assert_allclose(c.vx[0, 0], b.vx[0, 1], atol=20 * TINY.tol)
    assert len(list(tmp_path.glob("wake-*.npz"))) == 2


@pytest.mark.slow
def test_reference_cache_ignores_a_file_another_user_wrote(tmp_path, monkeypatch):
    """A cache folder others can write (docs/sol.md used /tmp/zoracle-cache): a file planted
    there under the right key was returned as the reference, its values silently used."""
    import os

    a = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    with np.load(a.path) as z:
        planted = dict(z)
    np.savez(a.path, **dict(planted, vx=planted["vx"] + 123.0))
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)  # the file is now another user's
    b = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    assert not b.cached
    np.testing.assert_array_equal(b.vx, a.vx)


@pytest.mark.slow
def test_reference_cache_is_keyed_by_phiflows_precision(tmp_path):
    """After phi.math.set_global_precision(64) the float32 file cached before came back."""
    from phi import math as pm

    a = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    pm.set_global_precision(64)
    try:
        b = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    finally:
        pm.set_global_precision(32)
    assert not b.cached and b.path != a.path and b.vx.dtype == np.float64 and a.vx.dtype == np.float32
    again = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path)
    assert again.cached and again.path == a.path  # the float32 key as before


def _check_oracle_setup(reference):
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=3, kernel=3, seed=1, out_scale=1.0)
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=1).bind(np.array([[0, 0], [1, 2]]))
    return oracle, pf.flat_params(net)


# check_oracle makes about 80 oracle calls, each a PhiFlow step (about 0.2-0.4 s, the time going
# into PhiFlow's geometry per step): 18 s alone, 35 s of a loaded default run. The default run
# keeps test_batches_equal_calls below (the same oracle: sparse CGE through the batched path
# against one-by-one calls) and test_threads_sharing_the_oracle_give_the_serial_gradient.
@pytest.mark.slow
def test_oracle_passes_check_oracle(reference):
    oracle, p = _check_oracle_setup(reference)
    report = check_oracle(oracle, p, step=1e-2, n_coords=3, n_rows=2)
    assert report["batch"] < 1e-6 and report["coordinate_losses"] < 1e-6


@pytest.mark.slow
def test_batches_equal_calls(reference):
    oracle, p = _check_oracle_setup(reference)
    caps = zo.capabilities(oracle)
    assert caps.batch and caps.coordinate and caps.data and not caps.split
    # sparse CGE through the batched path equals one-by-one forward differences
    coords = np.array([7, p.size - 1])
    est = zo.estimate_gradient(oracle, p, zo.CGE(mu=1e-2), coordinates=coords)
    base = oracle(p)
    for i in coords:
        x = p.copy()
        x[i] += 1e-2
        assert est.grad[i] == pytest.approx((oracle(x) - base) / 1e-2, rel=1e-4, abs=1e-9)
    assert est.nfev == len(coords) + 1 and np.count_nonzero(est.grad) <= len(coords)
    # the network runs in float32: a step below its spacing is refused (it gave a zero gradient)
    assert oracle.compute_dtype == np.float32 and p.dtype == np.float64
    with pytest.raises(zo.ArgumentError, match="rounds to a zero step in float32"):
        zo.estimate_gradient(oracle, p, zo.CGE(mu=1e-9, scheme="central"), coordinates=coords)


@pytest.mark.slow
def test_zero_params_are_the_uncorrected_solver(reference):
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=3, kernel=3)
    zeros = np.zeros(pf.flat_params(net).size)
    traj = pf.rollout(coarse, net, reference, zeros[None], 2)
    src = coarse.simulate(reference.vx[:, 0], reference.vy[:, 0], reference.re, 2, record=True)
    np.testing.assert_allclose(traj[0][0], src[0], atol=1e-6)
    rel = pf.SolverInTheLoop(coarse, net, reference, unroll=1, relative=True, starts=np.array([[0, 0], [1, 1]]))
    losses = rel.batch(np.stack([zeros, zeros + 0.05]))
    assert losses[0] == pytest.approx(1.0)
    assert losses[1] > 1.0  # a crude uniform correction is worse than none


def test_bind_validates_start_states(reference):
    coarse = TINY.coarsened(2)
    oracle = pf.SolverInTheLoop(coarse, pf.correction_net(channels=2, kernel=3), reference, unroll=2)
    with pytest.raises(zo.ArgumentError, match="out of range"):
        oracle.bind(np.array([[0, 5]]))
    with pytest.raises(zo.ArgumentError, match="unroll"):
        pf.SolverInTheLoop(coarse, pf.correction_net(channels=2, kernel=3), reference, unroll=7)


@pytest.mark.slow
def test_fo_gradient_matches_finite_differences(reference):
    """PhiFlow's torch backend differentiates the unrolled loss (FO-SOL's premise)."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3, seed=3, out_scale=1.0)
    p = pf.flat_params(net)
    starts = np.array([[0, 0]])
    grads = {}

    def grab(it, loss, trained):
        grads["g"] = torch.cat([q.grad.reshape(-1) for q in trained.parameters()]).double().numpy()

    # lr ~ 0: the recorded gradient belongs to the initial parameters
    pf.fit_differentiable(coarse, net, reference, starts=starts, unroll=1, iterations=1, lr=1e-12,
                          batch_size=1, callback=grab)
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=1, starts=starts)
    coords = np.argsort(-np.abs(grads["g"]))[:3]
    est = zo.estimate_gradient(oracle, p, zo.CGE(mu=1e-3, scheme="central"), coordinates=coords)
    np.testing.assert_allclose(est.grad[coords], grads["g"][coords], rtol=0.05)


@pytest.mark.slow
def test_fo_gradient_does_not_depend_on_the_solver_tolerance(reference):
    """The backward pass's pressure solve took the forward's absolute tolerance (1e-5), about the
    size of the loss gradient reaching it: its CG stopped early, and FO-SOL's gradient was 0.9% off
    the one at tol 1e-8 here (1.8% on the default run's grid, 18-28% in single partials)."""
    import dataclasses

    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3, seed=3, out_scale=1.0)
    starts = np.array([[0, 0], [1, 0], [1, 2]])

    def grad(flow):
        got = {}
        pf.fit_differentiable(flow, net, reference, starts=starts, unroll=2, iterations=1, lr=1e-12, batch_size=3,
                              callback=lambda it, loss, m: got.setdefault(
                                  "g", torch.cat([q.grad.reshape(-1) for q in m.parameters()]).double().numpy()))
        return got["g"]

    loose, tight = grad(coarse), grad(dataclasses.replace(coarse, tol=1e-8))
    assert np.linalg.norm(loose - tight) < 1e-4 * np.linalg.norm(tight)


@pytest.mark.slow
def test_wake_sheds_at_the_default_reynolds_number():
    """Transverse velocity behind the cylinder oscillates (coarse 32x64, Re 300, 320 steps)."""
    flow = pf.WakeFlow(nx=32, ny=64)
    vx, vy = flow.initial(1)
    tx, _ = flow.simulate(vx, vy, 300.0, 320, record=True)
    probe = tx[0, 100:, flow.nx // 2, int(flow.ny * 0.45)]  # x = 50, y = 90: behind the cylinder
    assert np.isfinite(tx).all()
    centred = probe - probe.mean()
    crossings = np.count_nonzero(np.diff(np.sign(centred)) != 0)
    # the shedding period is about 120 steps here: the probe swings both ways around its mean
    assert probe.max() - probe.min() > 0.1 and crossings >= 2


def test_oracle_refuses_bad_coordinates_params_and_frames_before_the_solver(reference):
    """`coords=[-1]` used to evaluate the last coordinate, a boolean mask was read as indices 0
    and 1, NaN parameters ran the solver and were reported as non-finite velocities, and a
    negative frame compared a rollout with the wrong reference frames."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=1, starts=np.array([[0, 0]]))
    p = pf.flat_params(net)
    mask = np.zeros(p.size, bool)
    mask[[1, 3]] = True
    cases = [(lambda: oracle.coordinate_losses(p, [-1], 1e-2), rf"`coords` must lie in \[0, {p.size}\), got -1"),
             (lambda: oracle.coordinate_losses(p, mask, 1e-2), "boolean array; pass np.flatnonzero"),
             (lambda: oracle.coordinate_losses(p, [1.7], 1e-2), "integer index array"),
             (lambda: oracle.coordinate_losses(p, [1], float("nan")), "`step` must be a finite number"),
             (lambda: oracle(np.full(p.size, np.nan)), "parameters must be finite; row 0"),
             (lambda: pf.rollout(coarse, net, reference, p[None], 1, frame=-1), "`frame` must be an integer >= 0"),
             (lambda: pf.SolverInTheLoop(coarse, net, reference, unroll=1, max_queries_per_call=0),
              "`max_queries_per_call` must be an integer >= 1")]
    for call, match in cases:
        with pytest.raises(zo.ArgumentError, match=match):
            call()
    assert oracle.solver_calls == 0
    traj = pf.rollout(coarse, net, reference, p[None], 1)
    with pytest.raises(zo.ArgumentError, match="`frame` must be an integer >= 0"):
        pf.mean_abs_error(traj, reference, frame=-1)


def test_relative_loss_refuses_a_zero_uncorrected_loss(tmp_path):
    """With factor 1 the uncorrected solver *is* the reference: relative=True returned [nan, inf]."""
    r1 = pf.reference_trajectories(TINY, [150.0], factor=1, warmup=0, steps=2, cache_dir=tmp_path)
    net = pf.correction_net(channels=2, kernel=3, out_scale=1.0)
    p = pf.flat_params(net)
    starts = np.array([[0, 0]])
    assert pf.SolverInTheLoop(TINY, net, r1, unroll=1, starts=starts)(np.zeros_like(p)) == 0.0
    rel = pf.SolverInTheLoop(TINY, net, r1, unroll=1, relative=True, starts=starts)
    with pytest.raises(zo.ArgumentError, match=r"relative=True divides by the uncorrected solver's loss, which is 0"):
        rel.batch(np.stack([np.zeros_like(p), p]))


def test_empty_coordinates_and_batches_give_empty_losses(reference):
    """relative=False raised a ValueError from the sub-step count of no Reynolds numbers."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    p = pf.flat_params(net)
    for relative in (False, True):
        oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=1, relative=relative, starts=np.array([[0, 0]]))
        assert oracle.coordinate_losses(p, np.array([], int), 1e-2).shape == (0,)
        assert oracle.batch(np.zeros((0, p.size))).shape == (0,)
        assert oracle.solver_calls == 0
    vx, vy = coarse.initial(1)
    ox, oy = coarse.simulate(vx[:0], vy[:0], np.zeros(0) + 100.0, 2, record=True)
    assert ox.shape == (0, 3) + coarse.shapes[0] and oy.shape == (0, 3) + coarse.shapes[1]


@pytest.mark.slow
def test_baselines_validate_params_starts_and_sizes_before_any_work(reference):
    """A longer params vector was silently truncated, a shorter one a raw torch RuntimeError, NaN
    params came back as NaN params; a negative frame trained on frames counted from the end;
    batch_size=0 and frame + unroll past the end raised raw ValueError / IndexError."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    p = pf.flat_params(net)
    one = np.array([[0, 0]])
    fit_off = lambda **kw: pf.fit_offline(coarse, net, reference, epochs=1, **kw)  # noqa: E731
    fit_fo = lambda **kw: pf.fit_differentiable(coarse, net, reference, iterations=1, **{  # noqa: E731
        "starts": one, "unroll": 1, **kw})
    cases = [
        (lambda: fit_off(params=np.r_[p, 1.0, 2.0]), rf"`params` must be a real vector of the network's {p.size}"),
        (lambda: fit_off(params=p[:-3]), rf"`params` must be a real vector of the network's {p.size}"),
        (lambda: fit_off(params=np.full(p.size, np.nan)), r"`params` must be finite; entry 0 is nan"),
        (lambda: fit_off(batch_size=0), r"`batch_size` must be an integer >= 1, got 0"),
        (lambda: fit_fo(params=np.r_[p, 7.0]), rf"`params` must be a real vector of the network's {p.size}"),
        (lambda: fit_fo(params=np.where(np.arange(p.size) == 4, np.inf, p)), r"`params` must be finite; entry 4"),
        (lambda: fit_fo(starts=np.array([[0, -3]]), unroll=2), r"start \[0, -3\] is out of range"),
        (lambda: fit_fo(starts=np.array([[0, 5]]), unroll=3), r"start \[0, 5\] is out of range.*frames 0..3"),
        (lambda: fit_fo(starts=np.array([[5, 0]])), r"start \[5, 0\] is out of range: runs are 0..1"),
        (lambda: fit_fo(batch_size=0), r"`batch_size` must be an integer >= 1, got 0"),
        (lambda: fit_fo(unroll=0), r"`unroll` must be an integer >= 1, got 0"),
        (lambda: fit_fo(unroll=7), r"`unroll`=7 exceeds the 6 recorded reference steps"),
        (lambda: fit_fo(starts=[[0.5, 1]]), r"`starts` must be an integer array"),
    ]
    for call, match in cases:
        with pytest.raises(zo.ArgumentError, match=match):
            call()
    # the reference: the checked baselines still train from given, valid params
    out, _ = pf.fit_offline(coarse, net, reference, epochs=1, params=p, lr=1e-12)
    np.testing.assert_allclose(out, p.astype(np.float32), atol=1e-9)


@pytest.mark.slow
def test_damaged_cache_file_is_recomputed(tmp_path):
    """A truncated wake-<key>.npz raised zipfile.BadZipFile (the code promised a recompute)."""
    a = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=0, steps=1, cache_dir=tmp_path)
    path = pathlib.Path(a.path)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], data[:-30], b""):
        path.write_bytes(damaged)
        b = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=0, steps=1, cache_dir=tmp_path)
        assert not b.cached
        np.testing.assert_array_equal(b.vx, a.vx)
    assert pf.reference_trajectories(TINY, [200.0], factor=2, warmup=0, steps=1, cache_dir=tmp_path).cached


@pytest.mark.slow
def test_reference_and_error_arguments_are_named(reference, tmp_path):
    """re=[] said "`batch` must be an integer >= 1", a 2-D re gave a TypeError, and
    mean_abs_error broadcast a one-run rollout against every reference run."""
    for re in ([], [[150.0, 300.0]]):
        with pytest.raises(zo.ArgumentError, match=r"`re` must be a non-empty 1-D list of Reynolds numbers"):
            pf.reference_trajectories(TINY, re, factor=2, steps=1, cache_dir=tmp_path)
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    zeros = np.zeros((1, pf.flat_params(net).size))
    run0 = reference.select([0])
    traj = pf.rollout(coarse, net, run0, zeros, 2)
    # the reference value: run 0's error computed by hand
    by_hand = (np.abs(traj[0][0, 0, 1:] - run0.vx[0, 1:3]).sum() + np.abs(traj[1][0, 0, 1:] - run0.vy[0, 1:3]).sum()) \
        / (traj[0][0, 0, 1:].size + traj[1][0, 0, 1:].size)
    assert pf.mean_abs_error(traj, run0)[0] == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(zo.ArgumentError, match=r"`traj` must hold \(k, 2, T \+ 1, \.\.\.\) trajectories"):
        pf.mean_abs_error(traj, reference)
    # a rollout from frame 3 scored with the default frame 0: the steps after frame 0, silently
    late = pf.rollout(coarse, net, run0, zeros, 2, frame=3)
    by_hand = (np.abs(late[0][0, 0, 1:] - run0.vx[0, 4:6]).sum() + np.abs(late[1][0, 0, 1:] - run0.vy[0, 4:6]).sum()) \
        / (late[0][0, 0, 1:].size + late[1][0, 0, 1:].size)
    assert pf.mean_abs_error(late, run0, frame=3)[0] == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(zo.ArgumentError, match=r"`traj` does not start at the reference's frame 0 \(`frame`\); it "
                                               r"starts at frame 3: pass frame=3"):
        pf.mean_abs_error(late, run0)


def test_failed_pressure_solve_names_the_entries_and_the_iteration_limit():
    """docs/sol.md promises the batch entries; the advice blamed a blown-up state for max_iter=1."""
    flow = pf.WakeFlow(nx=16, ny=32, max_iter=1)
    vx, vy = flow.initial(3)
    with pytest.raises(pf.SimulationError, match=r"failed at step 7 \(batch entries 0, 1, 2 of 3\): it did not "
                       r"reach the tolerance 1e-05 within `max_iter`=1 iterations.*raise `max_iter` or `tol`"):
        flow.simulate(vx, vy, [150.0, 300.0, 600.0], 1, start=7)


def test_what_the_oracle_would_misread_is_refused_before_the_solver(reference, tmp_path):
    # zo.Minibatches((runs, frames)) gave bind two columns, read as two transposed (run, frame)
    # rows (the wrong start states, silently); integer params rounded coordinate_losses' step away
    # (every loss the base loss); relative="False" counted as True; a cache_dir that cannot be
    # written failed after the whole fine simulation; NumPy scalars in a WakeFlow broke its cache key
    coarse = TINY.coarsened(2)
    oracle = pf.SolverInTheLoop(coarse, pf.correction_net(channels=2, kernel=3), reference, unroll=1)
    batch = zo.Minibatches((np.array([1, 1]), np.array([0, 1])), batch_size=2, shuffle=False)(0)[0]
    with pytest.raises(zo.ArgumentError, match="tuple of two columns"):
        oracle.bind(batch)
    rows = zo.Minibatches((np.array([[1, 0], [1, 1]]),), batch_size=2, shuffle=False)(0)[0]
    assert oracle.bind(rows).starts.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(zo.ArgumentError, match="`params` must be a float vector"):
        oracle.coordinate_losses(np.zeros(oracle.d, dtype=np.int64), [0], 0.5)
    with pytest.raises(zo.ArgumentError, match="`relative` must be True or False"):
        pf.SolverInTheLoop(coarse, pf.correction_net(channels=2, kernel=3), reference, unroll=1, relative="False")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(zo.ArgumentError, match="`cache_dir` .* cannot hold the reference trajectories"):
        pf.reference_trajectories(TINY, [150.0], factor=2, warmup=1, steps=1, cache_dir=blocker)
    flow = pf.WakeFlow(nx=np.int64(16), ny=32)
    got = pf.reference_trajectories(flow, [150.0], factor=2, warmup=1, steps=1, cache_dir=tmp_path / "c")
    assert got.vx.shape[0] == 1


def test_a_tuple_of_two_start_rows_is_still_taken(reference):
    # the check against a (runs, frames) column pair refused a tuple of two (run, frame) tuples too
    oracle = pf.SolverInTheLoop(TINY.coarsened(2), pf.correction_net(channels=2, kernel=3), reference, unroll=1)
    assert oracle.bind(((0, 3), (1, 5))).starts.tolist() == [[0, 3], [1, 5]]


def test_coarsening_and_references_name_what_is_wrong(reference):
    # coarsened(8) on a 16-cell grid said "`nx` must be >= 4"; select(0) dropped the run axis (the
    # oracle then failed on the grid's shape); a Reference with fewer Reynolds numbers than runs
    # was taken, and its default starts used run 0 only
    with pytest.raises(zo.ArgumentError, match="`factor` 8 leaves a 2x4 grid"):
        TINY.coarsened(8)
    one = reference.select(0)
    assert one.vx.shape[0] == 1 and one.re.tolist() == [150.0]
    with pytest.raises(zo.ArgumentError, match="one Reynolds number per run"):
        pf.Reference(reference.vx, reference.vy, reference.re[:1])


@pytest.mark.slow
def test_rollout_and_oracle_run_under_phiflows_64_bit_precision(reference):
    """Under phi.math.set_global_precision(64) the solver's float64 state met the float32
    correction network: every rollout and oracle call failed ("Input type (double) and bias type
    (float) should be the same"). The network runs in float32 and corrects the float64 state."""
    from phi import math as pm

    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=3, kernel=3, seed=1, out_scale=1.0)
    p = pf.flat_params(net)
    starts = np.array([[0, 0], [1, 1]])
    fo = dict(starts=starts, unroll=2, iterations=2, lr=1e-3)
    tr32 = pf.rollout(coarse, net, reference, np.stack([p, 0 * p]), 2)
    loss32 = pf.SolverInTheLoop(coarse, net, reference, unroll=1).bind(starts)(p)
    fo32 = pf.fit_differentiable(coarse, net, reference, **fo)[0]
    pm.set_global_precision(64)
    try:
        tr64 = pf.rollout(coarse, net, reference, np.stack([p, 0 * p]), 2)
        loss64 = pf.SolverInTheLoop(coarse, net, reference, unroll=1).bind(starts)(p)
        fo64 = pf.fit_differentiable(coarse, net, reference, **fo)[0]  # FO-SOL: the same cast
    finally:
        pm.set_global_precision(32)
    assert tr64[0].dtype == np.float64 and tr32[0].dtype == np.float32
    np.testing.assert_allclose(pf.mean_abs_error(tr64, reference), pf.mean_abs_error(tr32, reference), rtol=1e-3)
    assert loss64 == pytest.approx(loss32, rel=1e-3)
    np.testing.assert_allclose(fo64, fo32, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_threads_sharing_the_oracle_give_the_serial_gradient(reference):
    """PhiFlow's default backend and geometry caches are process-wide, and every call swapped
    parameters into one shared net: on a threading executor 2-4 of 6 estimates were wrong (by
    up to 1.4x the largest partial) or crashed in ``Box.is_axis_aligned``."""
    from zoracle.executors import JoblibExecutor

    net = pf.correction_net(channels=3, kernel=3, seed=2, out_scale=0.1)
    p = pf.flat_params(net)
    oracle = pf.SolverInTheLoop(TINY.coarsened(2), net, reference, unroll=2, max_queries_per_call=4)
    oracle = oracle.bind(np.array([[0, 0], [1, 1], [1, 3]]))
    coords = np.arange(0, 120, 10)
    serial = zo.estimate_gradient(oracle, p, zo.CGE(mu=5e-3), coordinates=coords).grad
    with JoblibExecutor(2, backend="threading") as ex:
        got = zo.estimate_gradient(oracle, p, zo.CGE(mu=5e-3), coordinates=coords, executor=ex).grad
    np.testing.assert_array_equal(got, serial)
    # the mechanism, without a race to win: two threads never simulate at once
    import threading
    import time

    inside, most, done = [0], [0], []

    def correct(vx, vy, t):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        inside[0] -= 1
        return vx, vy

    def run():
        vx, vy = TINY.coarsened(2).initial(1)
        TINY.coarsened(2).simulate(vx, vy, 150.0, 2, correct=correct)
        done.append(1)

    runs = [threading.Thread(target=run) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert most == [1] and done == [1, 1]


def test_a_net_of_the_wrong_shape_is_refused_where_it_is_given(reference):
    """A net with another output shape failed inside the first simulation with a raw torch error
    (one channel: IndexError; a shrinking grid: a size mismatch) or, with three output channels,
    had its third cut silently."""
    coarse = TINY.coarsened(2)
    nx1, ny = coarse.shapes[0]

    class Net(torch.nn.Module):
        def __init__(self, cin=3, cout=2, pad=1, norm=False):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3, padding=pad)
            self.norm = torch.nn.BatchNorm2d(cout) if norm else torch.nn.Identity()

        def forward(self, x):
            return self.norm(self.conv(x))

    cases = [(Net(cout=1), rf"got \(N, 1, {nx1}, {ny}\)"), (Net(cout=3), rf"got \(N, 3, {nx1}, {ny}\)"),
             (Net(pad=0), rf"got \(N, 2, {nx1 - 2}, {ny - 2}\)"), (Net(cin=2), "it raised RuntimeError"),
             (Net(norm=True), r"no BatchNorm in train mode: net.eval\(\)\); it raised")]
    for net, match in cases:
        for build in (lambda: pf.SolverInTheLoop(coarse, net, reference, unroll=1),
                      lambda: pf.rollout(coarse, net, reference, pf.flat_params(net)[None], 1),
                      lambda: pf.fit_offline(coarse, net, reference, epochs=1)):
            with pytest.raises(zo.ArgumentError, match=rf"`net` must map a \(N, 3, {nx1}, {ny}\).*" + match):
                build()
    pf.SolverInTheLoop(coarse, Net(norm=True).eval(), reference, unroll=1)  # eval mode runs under vmap
    # the net's own parameters are not used (the oracle's vectors are): a net on another device
    # (meta here, standing in for net.cuda()) was refused by a probe that ran its own weights
    pf.SolverInTheLoop(coarse, Net().to("meta"), reference, unroll=1)


@pytest.mark.slow
def test_a_blown_up_but_finite_state_gives_a_finite_loss(reference):
    """Squares of float32 differences overflowed to inf above 1.8e19: the loss was inf (not the
    documented SimulationError, the state being finite); it is summed in float64 there."""
    net = pf.correction_net(channels=3, kernel=3, seed=2, out_scale=1.0)
    p = pf.flat_params(net)
    oracle = pf.SolverInTheLoop(TINY.coarsened(2), net, reference, unroll=2, starts=np.array([[0, 0], [1, 1]]))
    small, big = oracle.batch(np.stack([p, 1e4 * p]))
    assert np.isfinite(big) and big > 1e30
    assert small == pytest.approx(oracle(p), rel=1e-6)


@pytest.mark.slow
def test_a_diverging_query_is_named_by_its_row_and_coordinate(reference):
    """Named by its entry in the flattened simulation batch ("batch entries 4, 5 of 6"), which
    a caller cannot map back: now the parameter row, and through CGE the coordinate."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3, seed=1)
    p = pf.flat_params(net)
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=2, relative=True)
    last = oracle.param_info[-1].slice
    P = np.stack([p, p, p]).copy()
    P[2, last] *= 1e25
    with pytest.raises(pf.SimulationError, match="parameter row 2 of 3$"):
        oracle.batch(P)
    with pytest.raises(zo.OracleError, match=f"the diverging queries move coordinate\\(s\\) {oracle.d - 1} by 1e\\+25"):
        zo.estimate_gradient(oracle, p, zo.CGE(mu=1e25), coordinates=np.array([0, oracle.d - 1]))


def test_a_reference_takes_lists_and_refuses_nan_frames_and_a_correction_of_other_shapes(reference):
    """re as a list passed the checks, then crashed indexing (TypeError); a NaN in a target frame
    gave every loss NaN silently; a `correct` returning other shapes failed inside PhiFlow
    ("Cannot merge shapes")."""
    listed = pf.Reference(reference.vx, reference.vy, list(reference.re))
    assert isinstance(listed.re, np.ndarray) and listed.select([1]).re.tolist() == [reference.re[1]]
    bad = reference.vx.copy()
    bad[1, 2, 0, 0] = np.nan
    with pytest.raises(zo.ArgumentError, match=r"`Reference.vx` holds a NaN or inf \(run 1, frame 2\)"):
        pf.Reference(bad, reference.vy, reference.re)
    coarse = TINY.coarsened(2)
    with pytest.raises(zo.ArgumentError, match="`correct` must return \\(vx, vy\\) of the shapes it was given"):
        coarse.simulate(reference.vx[:, 0], reference.vy[:, 0], reference.re, 1,
                        correct=lambda vx, vy, t: (vx[:1], vy[:1]))


def test_a_reference_of_mismatched_faces_or_reynolds_numbers_is_refused_at_construction(reference):
    """A vy of fewer frames than vx was taken: a rollout's error broadcast vy's one frame over its
    steps (0.014396 against 0.012949, silently), or the solver failed with an IndexError after its
    first step; vx given as vy blamed "state shapes"; re <= 0 waited for the first call; a
    Reynolds number as text raised NumPy's ValueError, naming nothing."""
    for vy in (reference.vy[:, :2], reference.vx):
        with pytest.raises(zo.ArgumentError, match=r"`Reference.vx` .* and `Reference.vy` .* must be one grid's "
                                                   r"faces, frame for frame"):
            pf.Reference(reference.vx, vy, reference.re)
    with pytest.raises(zo.ArgumentError, match=r"`Reference.re` must be > 0, got -150.0 \(run 0\)"):
        pf.Reference(reference.vx, reference.vy, -np.abs(reference.re) * 0 - 150.0)
    with pytest.raises(zo.ArgumentError, match=r"`re` must be Reynolds numbers, got 'abc'"):
        TINY.coarsened(2).simulate(reference.vx[:, 0], reference.vy[:, 0], "abc", 1)


def test_a_correction_overflowing_and_a_diverging_baseline_are_named_and_reference_numbers_checked(
        reference, monkeypatch):
    """The non-finite-velocity path (a correction that overflows) named no row; a diverging
    uncorrected baseline (relative=True) must not be called a parameter row; a Reference of
    booleans was taken."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3, seed=1)
    p = pf.flat_params(net)
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=2, relative=True)
    P = np.stack([p, p, p]).copy()
    P[2, oracle.param_info[-1].slice] = 1e300
    with pytest.raises(pf.SimulationError, match="after the correction.*parameter row 2 of 3$"):
        oracle.batch(P)
    n = len(oracle.starts)

    def baseline_diverges(self, *args, **kwargs):  # the last batch entries: the uncorrected baseline's
        raise pf.SimulationError("diverged", entries=[3 * n])

    monkeypatch.setattr(type(oracle.flow), "simulate", baseline_diverges)
    with pytest.raises(pf.SimulationError, match="diverged: parameter the uncorrected baseline \\(relative=True\\) of 3"):
        oracle.batch(P[:3])
    with pytest.raises(zo.ArgumentError, match="`Reference.re` must hold numbers"):
        pf.Reference(reference.vx, reference.vy, np.array([True, False]))


def test_wrong_parameter_vectors_are_named_as_passed(reference):
    """oracle(p[:-1]) said "parameters must have shape (k, 130), got (1, 129)" (a shape the caller
    never passed, no argument named); complex params lost their imaginary part silently (the
    loss of the real part came back) and an object array raised NumPy's raw TypeError."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3, seed=1, out_scale=1.0)
    p = pf.flat_params(net)
    d = p.size
    oracle = pf.SolverInTheLoop(coarse, net, reference, unroll=1, starts=np.array([[0, 0]]))
    cases = [(lambda: oracle(p[:-1]), rf"`params` must be a vector of the network's {d} parameters, got shape "
                                      rf"\({d - 1},\)"),
             (lambda: oracle(np.stack([p, p])), rf"`params` must be a vector .* got shape \(2, {d}\)"),
             (lambda: oracle(p + 1e-3j), r"`params` must hold real numbers, got dtype complex128"),
             (lambda: oracle(np.array([None] * d)), r"`params` must hold real numbers, got dtype object"),
             (lambda: oracle.batch(p[None, :-1]), rf"`params_batch` must be of shape \(k, {d}\), got shape \(1, {d - 1}\)"),
             (lambda: oracle.batch(np.stack([p, p]) + 0j), r"`params_batch` must hold real numbers"),
             (lambda: pf.rollout(coarse, net, reference, p[:-1], 1), rf"`params_batch` .* got shape \({d - 1},\)")]
    for call, match in cases:
        with pytest.raises(zo.ArgumentError, match=match):
            call()
    assert oracle.solver_calls == 0
    # the reference: a valid vector, a list of it, and a one-row batch give one loss
    assert oracle(list(p)) == oracle(p) == oracle.batch(p[None])[0]


def test_mean_abs_error_names_its_own_arguments(reference):
    """A rollout scored from a frame too late said "`steps`=2 from frame 5 exceeds the 6 recorded
    steps" (mean_abs_error takes no `steps`), and a one-frame trajectory "`steps` must be >= 1"."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    traj = pf.rollout(coarse, net, reference, pf.flat_params(net)[None], 2)
    with pytest.raises(zo.ArgumentError, match=r"`traj` holds 2 step\(s\) after its start; from `frame` 5 that exceeds "
                                               r"the reference's 6 recorded steps"):
        pf.mean_abs_error(traj, reference, frame=5)
    with pytest.raises(zo.ArgumentError, match=r"`traj` holds 0 step\(s\) after its start"):
        pf.mean_abs_error((traj[0][:, :, :1], traj[1][:, :, :1]), reference)
    with pytest.raises(zo.ArgumentError, match="`frame` must be an integer >= 0"):
        pf.mean_abs_error(traj, reference, frame=-1)
    # the reference value: the error of the same trajectory computed by hand
    by_hand = (np.abs(traj[0][0, :, 1:] - reference.vx[:, 1:3]).sum() + np.abs(traj[1][0, :, 1:] - reference.vy[:, 1:3]).sum()) \
        / (traj[0][0, :, 1:].size + traj[1][0, :, 1:].size)
    assert pf.mean_abs_error(traj, reference)[0] == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.slow
def test_baselines_train_a_float64_net_as_the_oracle_takes_it(reference):
    """SolverInTheLoop and rollout run any net in float32; fit_offline and fit_differentiable fed a
    float64 net (net.double(), or one built under torch.set_default_dtype(torch.float64)) float32
    inputs: RuntimeError "Input type (float) and bias type (double) should be the same"."""
    coarse = TINY.coarsened(2)
    net32 = pf.correction_net(channels=2, kernel=3, seed=1, out_scale=1.0)
    net64 = pf.correction_net(channels=2, kernel=3, seed=1, out_scale=1.0).double()
    starts = np.array([[0, 0], [1, 2]])
    for fit in (lambda n: pf.fit_offline(coarse, n, reference, epochs=2)[0],
                lambda n: pf.fit_differentiable(coarse, n, reference, starts=starts, unroll=1, iterations=2)[0]):
        # the reference: the same fit of the float32 net with the same values
        np.testing.assert_allclose(fit(net64), fit(net32), rtol=0, atol=1e-6)
    assert next(net64.parameters()).dtype == torch.float64  # the caller's net is not changed


@pytest.mark.slow
def test_the_adapter_imports_with_warnings_as_errors():
    """phiml's DeprecationWarning at its own import ('symmetric-gradient extrapolation is
    experimental') is not the user's to fix: `python -W error` (PYTHONWARNINGS=error, a CI's
    setting) imports the adapter and starts `zoracle sol`."""
    import os
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    run = subprocess.run([sys.executable, "-W", "error", "-c", "import zoracle.adapters.phiflow"],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-600:]


def test_fluid_mask_leaves_out_the_cylinder_with_its_documented_margin():
    flow = pf.WakeFlow()
    xc, yc = (np.arange(flow.nx) + 0.5) * flow.dx, (np.arange(flow.ny) + 0.5) * flow.dy
    r = np.hypot(xc[:, None] - flow.center[0], yc[None, :] - flow.center[1])
    np.testing.assert_array_equal(flow.fluid_mask(), r > flow.radius + 1.5 * max(flow.dx, flow.dy))
    assert (~flow.fluid_mask() & (r > flow.radius)).any()  # not merely the cells outside the cylinder


def test_baselines_and_net_check_seed_callback_and_out_scale_before_any_simulation(reference, monkeypatch):
    """fit_differentiable(callback=5) raised a bare TypeError after its first unrolled, back-propagated
    step; seed=-1 a bare NumPy ValueError there, while fit_offline and correction_net took it (and
    truncated seed=1.5) silently; correction_net(out_scale=nan) built a NaN network that fit_offline
    trained into NaN parameters without a word."""
    coarse = TINY.coarsened(2)
    net = pf.correction_net(channels=2, kernel=3)
    one = np.array([[0, 0]])
    rollouts = []
    real = pf.WakeFlow.simulate
    monkeypatch.setattr(pf.WakeFlow, "simulate", lambda self, *a, **k: rollouts.append(1) or real(self, *a, **k))
    fit_off = lambda **kw: pf.fit_offline(coarse, net, reference, epochs=1, **kw)  # noqa: E731
    fit_fo = lambda **kw: pf.fit_differentiable(coarse, net, reference, starts=one, unroll=1, iterations=2,  # noqa: E731
                                                **kw)
    cases = [
        (lambda: fit_fo(callback=5), r"`callback` must be callable \(iteration, loss, net\) or None, got int"),
        (lambda: fit_fo(seed=-1), r"`seed` must be an integer >= 0, got -1"),
        (lambda: fit_off(seed=-1), r"`seed` must be an integer >= 0, got -1"),
        (lambda: fit_off(seed=1.5), r"`seed` must be an integer >= 0, got 1.5"),
        (lambda: pf.correction_net(seed=-1), r"`seed` must be an integer >= 0, got -1"),
        (lambda: pf.correction_net(out_scale=float("nan")), r"`out_scale` must be a finite number"),
        (lambda: pf.correction_net(out_scale="0.1"), r"`out_scale` must be a finite number"),
        (lambda: pf.correction_net(out_scale=True), r"`out_scale` must be a finite number"),  # not 1.0
    ]
    for call, match in cases:
        with pytest.raises(zo.ArgumentError, match=match):
            call()
    assert rollouts == []  # every refusal came before the first simulation
    # the reference: valid settings still train, and a callback is called once per iteration
    seen = []
    pf.fit_differentiable(coarse, net, reference, starts=one, unroll=1, iterations=2, lr=1e-12, seed=3,
                          callback=lambda it, loss, n: seen.append((it, np.isfinite(loss))))
    assert seen == [(0, True), (1, True)]
    assert np.isfinite(pf.flat_params(pf.correction_net(channels=2, kernel=3, seed=2, out_scale=0.0))).all()


@pytest.mark.slow
def test_oracle_pickles_and_a_deepcopy_runs_its_own_network(reference):
    """The correction network ran through a vmapped local closure: pickle.dumps failed on it
    ("Can't pickle local object"), and a deepcopy kept the original's closure, so querying the
    copy ran the original's module (its hooks fired, the copy's never did)."""
    import copy
    import pickle

    net = pf.correction_net(channels=3, kernel=3, seed=1, out_scale=1.0)
    oracle = pf.SolverInTheLoop(TINY.coarsened(2), net, reference, unroll=1, starts=np.array([[0, 0], [1, 2]]))
    p = pf.flat_params(net)
    coords = np.array([3, p.size - 1])
    est = zo.estimate_gradient(oracle, p, zo.CGE(mu=1e-2), coordinates=coords)
    for dup in (pickle.loads(pickle.dumps(oracle)), copy.deepcopy(oracle)):
        assert dup.corrector.net is not oracle.corrector.net
        calls = []
        dup.corrector.net.register_forward_hook(lambda *a: calls.append("copy"))
        hook = oracle.corrector.net.register_forward_hook(lambda *a: calls.append("original"))
        again = zo.estimate_gradient(dup, p, zo.CGE(mu=1e-2), coordinates=coords)
        hook.remove()
        assert np.array_equal(again.grad, est.grad) and again.loss == est.loss
        assert calls and set(calls) == {"copy"}


@pytest.mark.slow
def test_a_cache_write_that_fails_keeps_the_trajectories_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """The cache folder is probed before the simulation; a disk that filled during it made the write
    raise a bare OSError after the whole simulation (minutes at the default size), and left the partial
    ``tmp*.npz.tmp`` behind, holding the disk full."""
    import adapters._phiflow_sim as sim

    want = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path / "ok")
    real = np.savez

    def full(fh, **arrays):
        fh.write(b"PK\x03\x04" + b"\0" * 64)  # part of the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim.np, "savez", full)
    with pytest.warns(UserWarning, match=r"could not be cached at .*wake-.*\.npz' \(OSError: \[Errno 28\] No space "
                                         r"left on device\); they are used uncached"):
        got = pf.reference_trajectories(TINY, [200.0], factor=2, warmup=1, steps=2, cache_dir=tmp_path / "full")
    monkeypatch.setattr(sim.np, "savez", real)
    assert not got.cached and got.path == ""
    assert np.array_equal(got.vx, want.vx) and np.array_equal(got.vy, want.vy)
    assert list((tmp_path / "full").iterdir()) == []  # no partial file left


def _plain_and_reused(monkeypatch, run):
    """``run()`` with the NumPy solver building its grid anew each call (as PhiFlow alone does) and
    with the grid it keeps per flow (faces computed once)."""
    sim = sys.modules[pf.WakeFlow.__module__]  # the solver's module (not adapters._phiflow_sim, a second copy)
    monkeypatch.setattr(sim, "_REUSE_GRID", False)
    plain = run()
    monkeypatch.setattr(sim, "_REUSE_GRID", True)
    return plain, run()


@pytest.mark.slow
def test_the_kept_grid_gives_the_plain_solvers_states_and_losses_bit_for_bit(reference, monkeypatch):
    # every batch entry's own diffusion sub-steps (Re 20 and 500 differ), one entry and several
    flow = pf.WakeFlow(nx=16, ny=32)
    runs = [(1, [150.0]), (3, [20.0, 500.0, 150.0])]
    plain, kept = _plain_and_reused(monkeypatch, lambda: [
        flow.simulate(*flow.initial(b), re, 2, record=True) for b, re in runs])
    for p, k in zip(plain, kept):
        for a, b in zip(p, k):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    # the oracle's losses: plain calls, a batch and coordinate losses, unrolled through 2 steps
    net = pf.correction_net(channels=3, kernel=3, seed=1, out_scale=1.0)
    p = pf.flat_params(net)
    P = p + 0.05 * np.random.default_rng(0).standard_normal((3, p.size))
    oracle = pf.SolverInTheLoop(TINY.coarsened(2), net, reference, unroll=2).bind(np.array([[0, 0], [1, 2]]))
    plain, kept = _plain_and_reused(monkeypatch, lambda: np.concatenate([
        [oracle(p)], oracle.batch(P), np.ravel(oracle.coordinate_losses(p, np.array([0, p.size - 1]), 1e-2))]))
    assert plain.tobytes() == kept.tobytes()


@pytest.mark.slow
def test_the_kept_grid_is_rebuilt_for_another_grid_or_obstacle(monkeypatch):
    sim = sys.modules[pf.WakeFlow.__module__]

    base = pf.WakeFlow(nx=8, ny=16)
    others = [pf.WakeFlow(nx=16, ny=16), pf.WakeFlow(nx=8, ny=16, center=(40.0, 70.0)),
              pf.WakeFlow(nx=8, ny=16, radius=7.0), pf.WakeFlow(nx=8, ny=16, height=160.0)]
    template, obstacle = sim._numpy_template(base, 32)
    assert sim._numpy_template(pf.WakeFlow(nx=8, ny=16), 32)[0] is template  # an equal flow reuses it
    for flow in others:
        t, o = sim._numpy_template(flow, 32)
        plain_t, plain_o = flow._phi()
        assert t is not template and t.geometry == plain_t.geometry and o == plain_o
    # simulating one flow after the other gives each its own plain result
    for flow in [base] + others:
        plain, kept = _plain_and_reused(monkeypatch, lambda: flow.simulate(*flow.initial(2), [150.0, 300.0], 1))
        assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, kept))
