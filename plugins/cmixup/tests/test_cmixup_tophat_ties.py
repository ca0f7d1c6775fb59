"""C-Mixup's sorted tophat sampler against the kernel with ties at the tophat's edge.

A label within an ulp of ``query +- bandwidth`` is a partner exactly when the brute-force
kernel's ``|y - q| / bandwidth < 1`` says so, however many copies of it the bank holds.
"""

from __future__ import annotations

import pytest
import torch
from mixhub_cmixup import sample_partners
from test_cmixup_exact import BW, HI_IN, HI_OUT, LO_IN, LO_OUT, _replay


@pytest.mark.parametrize("query, label", [LO_IN, LO_OUT, HI_IN, HI_OUT])
def test_sorted_tophat_ties_at_an_edge_follow_the_kernel(query, label):
    """Five copies of a label at the tophat's edge: all are partners or none (the kernel's
    predicate decides, not ``query -+ bandwidth``), however many copies there are."""
    bank = torch.tensor([label] * 5 + [query, query + 5.0], dtype=torch.float64)
    queries = torch.full((400,), query, dtype=torch.float64)
    got = sample_partners(queries, bank, BW, torch.Generator().manual_seed(0), "tophat", method="sorted")
    assert torch.equal(got, _replay(bank, queries, "tophat", 0))
    inside = abs((label - query) / BW) < 1.0
    assert set(got.tolist()) == ({0, 1, 2, 3, 4, 5} if inside else {5})
