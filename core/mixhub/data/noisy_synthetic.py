"""``noisy-synthetic``: a generated tabular classification task with label noise.

scikit-learn's ``make_classification`` (Guyon's Madelon-style generator): Gaussian clusters on
the vertices of a hypercube, with a share ``flip_y`` of labels assigned at random. The noise
makes an over-parameterised network trained with cross-entropy over-confident, which is what
calibration methods are measured on.

The data are generated once from ``data_seed`` (default 0); the run's seed only changes the
stratified train/val/test split. Features are standardised with training statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from . import register_dataset
from .base import DataBundle, split_bundle, standardise, stratified_split
from .bundled import _check_split, keep_fraction, noisy_labels

__all__ = ["DEFAULTS", "noisy_classification", "build_noisy_synthetic"]

#: ``make_classification`` settings of the default task (6000 x 40, 10 classes, 5% flipped labels).
DEFAULTS: dict[str, Any] = {
    "n_samples": 6000,
    "n_features": 40,
    "n_informative": 20,
    "n_redundant": 5,
    "n_classes": 10,
    "n_clusters_per_class": 2,
    "class_sep": 1.5,
    "flip_y": 0.05,
    "data_seed": 0,
}


def noisy_classification(**options: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x [N, F] float32, y [N] int64)`` from ``make_classification`` with ``DEFAULTS`` updated by ``options``."""
    from sklearn.datasets import make_classification

    bad = set(options) - set(DEFAULTS)
    if bad:
        raise DataError(
            f"data.options: unknown option(s) {sorted(bad)} for noisy-synthetic (known: {sorted(DEFAULTS)})"
        )
    kw = {**DEFAULTS, **options}
    seed = kw.pop("data_seed")
    try:
        x, y = make_classification(**kw, random_state=seed)
    except ValueError as exc:
        raise DataError(f"data.options: invalid noisy-synthetic settings: {exc}") from exc
    return x.astype(np.float32), y.astype(np.int64)


@register_dataset("noisy-synthetic", options=None)
def build_noisy_synthetic(cfg: Any, seed: int) -> DataBundle:
    """Generated noisy classification; ``data.options`` overrides ``DEFAULTS``.

    Split by ``data.test_frac`` and ``data.val_frac`` (stratified, by seed); ``data.train_frac``
    and ``data.label_noise`` apply to the training split as for the other bundled datasets.
    """
    _check_split(cfg)
    x, y = noisy_classification(**dict(cfg.options))
    num_classes = int(y.max()) + 1
    test_idx, val_idx, train_idx = stratified_split(y, (cfg.test_frac, cfg.val_frac), seed)
    train_idx = keep_fraction(train_idx, y, cfg.train_frac, seed)
    return split_bundle(
        standardise(x, train_idx), y, test_idx, val_idx, train_idx,
        task="classification",
        num_classes=num_classes,
        input_shape=(x.shape[1],),
        y_train=noisy_labels(y[train_idx], cfg.label_noise, num_classes, seed),
        info={"name": "noisy-synthetic"},
    )
