"""The ``noisy-synthetic`` dataset the calibration proxy trains on (``mixhub.data.noisy_synthetic``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixhub import DataError
from mixhub.config import DataConfig
from mixhub.data import build_data


def _labels(ds) -> np.ndarray:
    return np.array([int(ds[i][1]) for i in range(len(ds))])


def test_default_task_shapes_and_split():
    b = build_data(DataConfig(name="noisy-synthetic", test_frac=5 / 12, val_frac=1 / 12), 0)
    assert b.task == "classification" and b.num_classes == 10 and b.input_shape == (40,)
    assert (len(b.train), len(b.val), len(b.test)) == (3000, 500, 2500)
    x = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert torch.allclose(x.mean(0), torch.zeros(40), atol=1e-4)  # standardised with training statistics
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(40), atol=1e-3)
    assert sorted(set(_labels(b.test))) == list(range(10))


def test_data_are_fixed_and_the_seed_only_moves_the_split():
    from sklearn.datasets import make_classification

    x_ref, y_ref = make_classification(
        n_samples=6000, n_features=40, n_informative=20, n_redundant=5, n_classes=10,
        n_clusters_per_class=2, class_sep=1.5, flip_y=0.05, random_state=0,
    )  # fmt: skip
    a = build_data(DataConfig(name="noisy-synthetic"), 0)
    b = build_data(DataConfig(name="noisy-synthetic"), 1)
    counts = lambda bundle: np.bincount(  # noqa: E731
        np.concatenate([_labels(bundle.train), _labels(bundle.val), _labels(bundle.test)]), minlength=10
    )
    assert (counts(a) == np.bincount(y_ref, minlength=10)).all() and (counts(a) == counts(b)).all()
    assert not np.array_equal(_labels(a.test), _labels(b.test))


def test_options_are_checked():
    small = build_data(DataConfig(name="noisy-synthetic", options={"n_samples": 300, "n_classes": 3}), 0)
    assert small.num_classes == 3
    with pytest.raises(DataError, match="unknown option"):
        build_data(DataConfig(name="noisy-synthetic", options={"n_sample": 300}), 0)
