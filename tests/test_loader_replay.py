"""A DataLoader whose order a resumed run replays: `batches(epoch)` that seeds the generator its
loader shuffles by (torch.manual_seed(epoch), or the loader's own generator reseeded) is not warned
about; one that leaves a generator running on from the epoch before is."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from test_batches_kinds import _resumed_and_whole, _xy

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

def _dataset():
    X, y = _xy()
    return TensorDataset(torch.tensor(X), torch.tensor(y))


def test_a_loader_whose_generator_batches_reseeds_by_epoch_is_replayed_and_not_warned_about(tmp_path):
    """One loader for every epoch, its generator seeded by `batches(epoch)` (g.manual_seed(epoch)):
    replayed bit for bit, yet warned as "one generator that runs on from epoch to epoch"."""
    ds = _dataset()

    def reseeded():
        g = torch.Generator()
        loader = DataLoader(ds, batch_size=6, shuffle=True, generator=g)

        def batches(epoch):
            g.manual_seed(epoch)
            return loader
        return batches

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole, resumed = _resumed_and_whole(tmp_path, reseeded)
    assert np.array_equal(whole, resumed)


def test_a_loader_made_after_torch_manual_seed_of_the_epoch_is_replayed_and_not_warned_about(tmp_path):
    """`torch.manual_seed(epoch)` in `batches(epoch)`, then a loader on torch's global generator:
    replayed bit for bit, yet warned as shuffling by torch's global generator."""
    ds = _dataset()

    def seeded_globally():
        def batches(epoch):
            torch.manual_seed(epoch)
            return DataLoader(ds, batch_size=6, shuffle=True)
        return batches

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole, resumed = _resumed_and_whole(tmp_path, seeded_globally)
    assert np.array_equal(whole, resumed)


def test_new_loaders_sharing_one_generator_that_runs_on_are_warned_about(tmp_path):
    """A new loader each epoch on one generator made once: its order runs on from epoch to epoch as
    one loader's does, and a resumed run trains other batches; it was not warned about."""
    ds = _dataset()

    def shared():
        g = torch.Generator().manual_seed(0)
        return lambda epoch: DataLoader(ds, batch_size=6, shuffle=True, generator=g)

    with pytest.warns(UserWarning, match=r"`batches\(2\)` returned a DataLoader that shuffles by one generator that "
                                         r"runs on from epoch to epoch \(the same generator for every epoch\)"):
        whole, resumed = _resumed_and_whole(tmp_path, shared)
    assert not np.array_equal(whole, resumed)  # what the warning is about
