"""Params that are not a fresh contiguous native float64 NumPy array, as users get them from files
and other libraries: memory maps, read-only and strided views, subclasses, masked arrays, complex,
h5py datasets. Each is either estimated as its float64 copy is (by a finite-difference loop
written here) or refused with a message that names ``params`` and gives a fix that is right."""

import os

import numpy as np
import pytest

import zoracle as zo


def _loss(x):
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((x - 1.0) ** 2) + x[0] ** 3)


def _central_differences(x, h=1e-3):
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (_loss(x + e) - _loss(x - e)) / (2 * h)
    return g


_BASE = np.array([0.5, -1.0, 2.0, 0.25])


def _accepted_kinds(tmp_path):
    path = os.fspath(tmp_path / "params.dat")
    on_disk = np.memmap(path, dtype=np.float64, mode="w+", shape=_BASE.shape)
    on_disk[:] = _BASE
    on_disk.flush()
    read_only = _BASE.copy()
    read_only.flags.writeable = False

    class Sub(np.ndarray):
        pass

    return {"memmap r+": np.memmap(path, dtype=np.float64, mode="r+", shape=_BASE.shape),
            "memmap r": np.memmap(path, dtype=np.float64, mode="r", shape=_BASE.shape),
            "read-only": read_only, "strided view": np.repeat(_BASE, 2)[::2], "subclass": _BASE.copy().view(Sub)}


def test_memmaps_views_and_subclasses_estimate_as_their_float64_copy_and_are_left_alone(tmp_path):
    for name, params in _accepted_kinds(tmp_path).items():
        est = zo.estimate_gradient(_loss, params, zo.CGE(scheme="central", mu=1e-3))
        assert type(est.grad) is np.ndarray and est.grad.dtype == np.float64, name
        np.testing.assert_allclose(est.grad, _central_differences(_BASE), rtol=1e-9, atol=1e-9, err_msg=name)
        for estimator in (zo.RGE(directions=6, mu=1e-3), zo.SNES(population=6)):
            got = zo.estimate_gradient(_loss, params, estimator, rng=3)
            assert got == zo.estimate_gradient(_loss, _BASE.copy(), estimator, rng=3), (name, estimator)
        np.testing.assert_array_equal(params, _BASE)
    # the file under the memory maps was never written
    np.testing.assert_array_equal(np.fromfile(tmp_path / "params.dat", dtype=np.float64), _BASE)


def test_train_and_resume_return_a_plain_writable_array_for_a_memmap_and_leave_the_file(tmp_path):
    kinds = _accepted_kinds(tmp_path)
    ref = zo.train(_loss, _BASE.copy(), epochs=3, optimizer=zo.sgd(0.01), progress=False, rng=0).params
    for name, params in kinds.items():
        ck = os.fspath(tmp_path / f"{name.replace(' ', '_')}.npz")
        zo.train(_loss, params, epochs=2, optimizer=zo.sgd(0.01), progress=False, checkpoint=ck, rng=0)
        res = zo.train(_loss, params, epochs=3, optimizer=zo.sgd(0.01), progress=False, checkpoint=ck, resume=ck, rng=0)
        assert type(res.params) is np.ndarray and res.params.flags.writeable, name
        np.testing.assert_array_equal(res.params, ref, err_msg=name)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "params.dat", dtype=np.float64), _BASE)


def test_float32_params_come_back_float32_through_a_resume(tmp_path):
    ck = os.fspath(tmp_path / "run.npz")
    p = _BASE.astype(np.float32)
    zo.train(_loss, p, epochs=1, optimizer=zo.adam(0.01), progress=False, checkpoint=ck, rng=0)
    res = zo.train(_loss, p, epochs=2, optimizer=zo.adam(0.01), progress=False, checkpoint=ck, resume=ck, rng=0)
    assert res.params.dtype == np.float32
    ref = zo.train(_loss, p, epochs=2, optimizer=zo.adam(0.01), progress=False, rng=0)
    np.testing.assert_array_equal(res.params, ref.params)
    with pytest.raises(zo.CheckpointError, match="dtype: checkpoint has 'float32', this run has 'float64'"):
        zo.train(_loss, _BASE, epochs=3, optimizer=zo.adam(0.01), progress=False, checkpoint=ck, resume=ck, rng=0)


@pytest.mark.parametrize("params, match", [
    (_BASE.astype(">f8"), r"`params` is float64 in big-endian byte order \(>f8\).*astype\(np.float64\)"),
    (_BASE.astype(">f4"), r"`params` is float32 in big-endian byte order \(>f4\).*astype\(np.float32\)"),
    (np.asfortranarray(_BASE.reshape(2, 2)), r"must be 1-D .* got shape \(2, 2\); use params.ravel\(\)"),
    (np.array(0.5), r"must be 1-D .* got shape \(\); use params.ravel\(\)"),
    (_BASE.astype(np.float16), "got float16; use params.astype"),
    (_BASE.astype(np.longdouble), f"got {np.dtype(np.longdouble)}; use params.astype"),
    (np.array([1, 2, 3]), "got int64; use params.astype"),
    (np.array([True, False]), "got bool; use params.astype"),
    ([0, 1, 2], r"got list; use np.asarray\(params, dtype=np.float64\)"),
    ((0.5, 1.0), r"got tuple; use np.asarray\(params, dtype=np.float64\)"),
])
def test_kinds_that_are_refused_name_params_and_a_fix(params, match):
    calls = []
    for run in (lambda: zo.estimate_gradient(lambda x: calls.append(1) or 0.0, params),
                lambda: zo.train(lambda x: calls.append(1) or 0.0, params, epochs=1, progress=False)):
        with pytest.raises(zo.ArgumentError, match=match):
            run()
    assert not calls


def test_a_torch_tensor_as_params_is_refused_with_the_conversion():
    torch = pytest.importorskip("torch")
    with pytest.raises(zo.ArgumentError, match=r"`params` is a torch.Tensor.*np.asarray\(params.detach\(\).cpu\(\)\)"):
        zo.estimate_gradient(_loss, torch.tensor(_BASE))


# ---------------------------------------------------------------- fixes
def test_a_masked_array_refusal_does_not_send_its_hidden_data_on_as_values():
    """The refusal said "use np.asarray(params, dtype=np.float64)", which passes on the data
    hidden behind the mask (here 99.0) as if it were a parameter."""
    params = np.ma.masked_array([0.5, 99.0, 2.0], mask=[False, True, False])
    with pytest.raises(zo.ArgumentError, match=r"MaskedArray with 1 masked entry \(the first at index 1\).*"
                                               r"np\.asarray\(params\.filled\(0\.0\)"):
        zo.estimate_gradient(_loss, params)
    with pytest.raises(zo.ArgumentError, match=r"MaskedArray with 2 masked entries \(the first at index \(0, 1\)\)"
                                               r".*\.ravel\(\)"):
        zo.train(_loss, np.ma.masked_array(np.ones((2, 2)), mask=[[0, 1], [0, 1]]), epochs=1, progress=False)
    # no masked entries: np.asarray is the right fix, as before
    with pytest.raises(zo.ArgumentError, match=r"is a numpy.MaskedArray, not a plain NumPy array; "
                                               r"use np.asarray\(params, dtype=np.float64\)$"):
        zo.estimate_gradient(_loss, np.ma.masked_array(_BASE))


def test_a_complex_params_refusal_does_not_suggest_dropping_the_imaginary_part():
    """It said "use params.astype(np.float64)": NumPy drops the imaginary part (a ComplexWarning)."""
    with pytest.raises(zo.ArgumentError, match=r"`params` is complex \(complex128\).*"
                                               r"np\.concatenate\(\[params\.real, params\.imag\]\)"):
        zo.estimate_gradient(_loss, _BASE + 1j)


def test_a_2d_array_like_that_is_not_numpy_is_told_to_convert_before_ravel(tmp_path):
    """A 2-D h5py dataset was told "use params.ravel()", which it does not have."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["w"] = _BASE.reshape(2, 2)
        f["be"] = _BASE.astype(">f8")
        with pytest.raises(zo.ArgumentError, match=r"`params` is a h5py.Dataset, not a NumPy array; "
                                                   r"use np.asarray\(params, dtype=np.float64\)\.ravel\(\)"):
            zo.estimate_gradient(_loss, f["w"])
        with pytest.raises(zo.ArgumentError, match=r"h5py.Dataset, not a NumPy array; "
                                                   r"use np.asarray\(params, dtype=np.float64\)$"):
            zo.estimate_gradient(_loss, f["be"])
        # the fix given works, and reads the big-endian one by value
        fixed = np.asarray(f["be"], dtype=np.float64)
        np.testing.assert_allclose(zo.estimate_gradient(_loss, fixed, zo.CGE(scheme="central", mu=1e-3)).grad,
                                   _central_differences(_BASE), rtol=1e-9, atol=1e-9)


def test_non_finite_params_are_counted_and_given_a_fix():
    with pytest.raises(zo.ArgumentError, match=r"`params` must be finite, got nan at index 0 \(2 entries are not "
                                               r"finite\).*np\.where\(np\.isfinite\(params\), params, 0\.0\)"):
        zo.estimate_gradient(_loss, np.array([np.nan, 1.0, np.inf]))


def test_save_checkpoint_refuses_a_masked_array_whose_mask_it_would_drop(tmp_path):
    """np.asarray dropped the mask: the data hidden behind it came back from load_checkpoint as values."""
    path = os.fspath(tmp_path / "c.npz")
    with pytest.raises(zo.ArgumentError, match=r"array 'w' is a numpy.MaskedArray with 1 masked entry "
                                               r"\(the first at index 1\).*np\.ma\.getmaskarray"):
        zo.save_checkpoint(path, {"w": np.ma.masked_array([1.0, 99.0], mask=[False, True])}, {})
    assert not os.path.exists(path)
    zo.save_checkpoint(path, {"w": np.ma.masked_array([1.0, 2.0])}, {})  # nothing masked: nothing lost
    np.testing.assert_array_equal(zo.load_checkpoint(path)[0]["w"], [1.0, 2.0])


_OPTIMIZERS = [lambda: zo.sgd(0.1, momentum=0.9), lambda: zo.adam(0.1), lambda: zo.sign_sgd(0.1)]


@pytest.mark.parametrize("make", _OPTIMIZERS)
def test_optimizers_refuse_masked_params(make):
    """A masked entry never moved under sgd and adam (the result a MaskedArray), and sign_sgd
    dropped the mask and moved it."""
    opt = make()
    p = np.array([1.0, 2.0, 3.0])
    state = opt.init(p)
    with pytest.raises(zo.ArgumentError, match=r"`params` passed to .* is a numpy.MaskedArray with 1 masked entry "
                                               r"\(the first at index 1\).*np\.ma\.getdata\(params\)"):
        opt.update(np.ones(3), state, np.ma.masked_array(p, mask=[False, True, False]))
    nothing = np.ma.masked_array(p)  # nothing masked (nomask): updated as the plain array, as before (h331)
    got, plain = opt.update(np.ones(3), opt.init(nothing), nothing), opt.update(np.ones(3), opt.init(p), p)
    np.testing.assert_array_equal(np.ma.getdata(got[0]), plain[0])


@pytest.mark.parametrize("make", _OPTIMIZERS)
def test_optimizers_give_a_fix_that_works_for_2d_complex_and_list_params(make):
    """A 2-D float array, a complex one and a list were told "an integer array would round every
    step away: use params.astype(np.float64)", which fixes none of them."""
    opt = make()
    p = np.array([1.0, 2.0, 3.0])
    with pytest.raises(zo.ArgumentError, match=r"got float64 array of shape \(2, 2\); use params.ravel\(\)$"):
        opt.init(np.ones((2, 2)))
    with pytest.raises(zo.ArgumentError, match=r"got list; use np.asarray\(params, dtype=np.float64\)$"):
        opt.init([1.0, 2.0])
    with pytest.raises(zo.ArgumentError, match=r"got complex128 .*np\.concatenate\(\[params\.real, params\.imag\]\)"):
        opt.init(p + 1j)
    with pytest.raises(zo.ArgumentError, match="got int64 array of shape .* an integer array would round every step"):
        opt.init(np.array([1, 2]))


@pytest.mark.parametrize("make", _OPTIMIZERS)
def test_optimizers_update_big_endian_and_long_double_params_by_value(make):
    opt = make()
    p = np.array([1.0, 2.0, 3.0])
    ref, _ = opt.update(np.array([1.0, -2.0, 0.5]), opt.init(p), p)
    for q in (p.astype(">f8"), p.astype(np.longdouble)):
        new, _ = opt.update(np.array([1.0, -2.0, 0.5]), opt.init(q), q)
        assert new.dtype == q.dtype
        np.testing.assert_allclose(new.astype(np.float64), ref, rtol=1e-15)


def test_snes_sigma_that_is_masked_or_complex_is_refused():
    """A masked sigma's hidden entry (99.0) was used as a search width, and a complex one lost its
    imaginary part with a ComplexWarning only."""
    x = np.zeros(4)
    with pytest.raises(zo.ArgumentError, match=r"`state` \(SNES's sigma\) is a numpy.MaskedArray with 1 masked entry "
                                               r"\(the first at index 1\).*state\.filled"):
        zo.estimate_gradient(_loss, x, zo.SNES(population=6),
                             state=np.ma.masked_array([0.1, 99.0, 0.1, 0.1], mask=[0, 1, 0, 0]), rng=0)
    with pytest.raises(zo.ArgumentError, match=r"must hold real widths > 0, got dtype complex128"):
        zo.estimate_gradient(_loss, x, zo.SNES(population=6), state=np.full(4, 0.1 + 0j), rng=0)
    # a big-endian one, as np.load of another machine's file gives: read by value
    a = zo.estimate_gradient(_loss, x, zo.SNES(population=6), state=np.full(4, 0.1, ">f8"), rng=0)
    b = zo.estimate_gradient(_loss, x, zo.SNES(population=6), state=np.full(4, 0.1), rng=0)
    assert a == b


def test_masked_coordinates_are_refused_rather_than_estimated_behind_the_mask():
    """Coordinate 1, masked out, was estimated anyway (nfev 4, its partial nonzero)."""
    calls = []
    loss = lambda x: calls.append(1) or _loss(x)
    for c in (np.ma.masked_array([0, 1, 2], mask=[0, 1, 0]), np.ma.masked_array([True, True, False, False],
                                                                              mask=[0, 1, 0, 0])):
        with pytest.raises(zo.ArgumentError, match=r"`coordinates` is a numpy.MaskedArray with 1 masked entry "
                                                   r"\(the first at index 1\).*coordinates\.compressed\(\)"):
            zo.estimate_gradient(loss, _BASE, zo.CGE(mu=1e-3), coordinates=c)
    assert not calls
    # the fixes given estimate exactly the unmasked coordinates
    c = np.ma.masked_array([0, 1, 2], mask=[0, 1, 0])
    for fixed in (c.compressed(), np.ma.masked_array([True, True, False, False], mask=[0, 1, 0, 0]).filled(False)):
        est = zo.estimate_gradient(_loss, _BASE, zo.CGE(scheme="central", mu=1e-3), coordinates=fixed)
        want = np.zeros(4)
        keep = [0, 2] if fixed.dtype != bool else [0]
        want[keep] = _central_differences(_BASE)[keep]
        np.testing.assert_allclose(est.grad, want, rtol=1e-9, atol=1e-9)
    # big-endian indices, as np.load of another machine's file gives: read by value
    np.testing.assert_array_equal(zo.estimate_gradient(_loss, _BASE, coordinates=np.array([0, 2], ">i8")).grad,
                                  zo.estimate_gradient(_loss, _BASE, coordinates=np.array([0, 2])).grad)


def test_torch_oracle_refuses_params_it_would_load_wrongly_or_refuse_unnamed():
    """Called directly (oracle(params), oracle.load(params) of a saved vector): a masked array's
    hidden data was loaded as values, a complex array's real part only (torch's UserWarning), and
    a big-endian or long double array met torch's ValueError / TypeError, naming no argument."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle, cross_entropy

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    oracle = TorchOracle(model, cross_entropy, batch=(x, y))
    p = oracle.initial_params()
    hidden = p.copy()
    hidden[1] = 99.0
    cases = [(np.ma.masked_array(hidden, mask=np.arange(p.size) == 1), r"is a numpy.MaskedArray with 1 masked entry.*filled"),
             (p + 0j, r"is complex \(complex128\)"), (torch.tensor(p + 0j), r"is complex \(torch.complex128\)"),
             (p.astype(">f8"), r"has dtype >f8 \(in big-endian byte order\).*astype\(np.float64\)")]
    if np.dtype(np.longdouble).itemsize > 8:
        cases.append((p.astype(np.longdouble), r"has dtype \S+ \(a long double\).*astype\(np.float64\)"))
    for bad, match in cases:
        for call in (oracle, oracle.load):
            with pytest.raises(zo.ArgumentError, match="`params` " + match):
                call(bad)
    with pytest.raises(zo.ArgumentError, match=r"`params_batch` is complex"):
        oracle.batch(np.stack([p, p]) + 0j)
    np.testing.assert_array_equal(torch.cat([q.detach().reshape(-1) for q in model.parameters()]).numpy(), p)
    # the fixes given evaluate the values meant
    want = oracle(p)
    assert oracle(p.astype(">f8").astype(np.float64)) == want
    assert oracle(np.ma.masked_array(p, mask=np.arange(p.size) == 1).filled(p[1])) == want
    assert oracle((p + 0j).real) == want
