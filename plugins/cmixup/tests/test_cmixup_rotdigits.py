"""The core ``rotdigits`` dataset (built for C-Mixup's RCF-MNIST-like proxy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixhub.config import DataConfig
from mixhub.data import build_data
from mixhub.data.rotdigits import paint_red_blue, rotate_images


def _bundle(seed: int = 0, **options):
    return build_data(DataConfig(name="rotdigits", image_size=16, options=options), seed)


def _red_share(ds) -> np.ndarray:
    """Red / (red + blue) of every image, undoing the dataset's normalisation."""
    out = []
    for i in range(len(ds)):
        x, _ = ds[i]
        img = x.numpy() * ds.std[:, None, None] + ds.mean[:, None, None]
        out.append(img[0].sum() / max(img[0].sum() + img[2].sum(), 1e-6))
    return np.array(out)


def test_rotdigits_shapes_targets_and_ood_split():
    b = _bundle()
    assert b.task == "regression" and b.num_classes is None and b.input_shape == (3, 16, 16)
    assert set(b.extra_splits) == {"test_ood"}
    y = b.train_targets
    assert y.dim() == 1 and float(y.min()) >= 0 and float(y.max()) < 1
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    # the colour cue follows the angle in train / test and is reversed in test_ood
    y_test = np.array([float(b.test[i][1]) for i in range(len(b.test))])
    r_train = _red_share(b.train)
    r_test, r_ood, r_val = _red_share(b.test), _red_share(b.extra_splits["test_ood"]), _red_share(b.val)
    y_train = y.numpy()
    assert np.corrcoef(r_train, y_train)[0, 1] > 0.6
    assert np.corrcoef(r_test, y_test)[0, 1] > 0.6
    assert np.corrcoef(r_ood, y_test)[0, 1] < -0.6
    y_val = np.array([float(b.val[i][1]) for i in range(len(b.val))])
    assert abs(np.corrcoef(r_val, y_val)[0, 1]) < 0.2


def test_rotdigits_data_fixed_split_by_seed_and_gray_option():
    a, b = _bundle(0), _bundle(1)
    assert sorted(
        a.train_targets.tolist()
        + [float(a.val[i][1]) for i in range(len(a.val))]
        + [float(a.test[i][1]) for i in range(len(a.test))]
    ) == pytest.approx(
        sorted(
            b.train_targets.tolist()
            + [float(b.val[i][1]) for i in range(len(b.val))]
            + [float(b.test[i][1]) for i in range(len(b.test))]
        )
    )
    assert not torch.equal(a.train_targets, b.train_targets)
    gray = _bundle(0, color=False, copies=2)
    assert gray.extra_splits == {} and len(gray.train) + len(gray.val) + len(gray.test) == 2 * 1797
    with pytest.raises(Exception, match="unknown option"):
        _bundle(0, colour=True)


def test_rotate_and_paint_helpers():
    img = np.zeros((1, 9, 9), dtype=np.float32)
    img[0, 4, 6:] = 1.0  # a bar to the right of the centre
    rot = rotate_images(img, np.array([90.0]))[0]
    # a quarter turn moves the bar onto the vertical axis through the centre
    assert rot[:, 4].sum() > 2.0 and rot[4, 6:].sum() < 0.5
    assert np.allclose(rotate_images(img, np.array([0.0])), img, atol=1e-6)
    col = paint_red_blue(np.ones((2, 2, 2), dtype=np.float32), np.array([0.25, 1.0]))
    assert (
        np.allclose(col[0, ..., 0], 0.25)
        and np.allclose(col[0, ..., 2], 0.75)
        and np.allclose(col[1, ..., 2], 0.0)
    )
