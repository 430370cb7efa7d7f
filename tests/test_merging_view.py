"""core.study.merging: the ToMe view of one image and accuracy/MACs against r, checked against
core.tokens and the one evaluator computed independently."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core import study, tokens
from core.data import load_dataset
from core.models import build_model, count_macs


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes=6, pretrained=True, dataset="shapes").eval()
    _, val = load_dataset("shapes", (32, 32), seed=0)
    return model, torch.utils.data.Subset(val, range(48))


def test_view_groups_and_predictions_match_core_tokens(setup):
    model, val = setup
    image = val[0][0]
    v = study.merge_view(model, image, 8)
    merged = tokens.merge_tokens(model, 8)
    assert v.tokens == tuple(tokens.tokens_per_block(merged))
    want = tokens.merge_groups(merged, image)
    assert len(v.groups) == len(want) == len(v.overlays)
    for g, w in zip(v.groups, want):
        assert np.array_equal(g, w.numpy())
    # each block's groups: as many distinct ids as patch tokens left after it
    P = model.grid_size[0] * model.grid_size[1]
    for g, n in zip(v.groups, v.tokens[1:]):
        assert len(np.unique(g)) == n - 1 and g.shape == (P,)  # minus the class token
    with torch.no_grad():
        ref = torch.softmax(merged(image[None]), -1)[0].numpy()
        dense = torch.softmax(model(image[None]), -1)[0].numpy()
    np.testing.assert_allclose(v.probs, ref, atol=1e-6)
    np.testing.assert_allclose(v.probs_dense, dense, atol=1e-6)
    assert v.macs == count_macs(merged) < v.macs_dense == count_macs(model)
    assert v.overlays[0].shape == (32, 32, 3) and v.overlays[0].dtype == np.uint8


def test_curve_equals_independent_evaluations(setup):
    model, val = setup
    df = study.merge_curve(model, val, [0, 4, 8])
    assert list(df.columns) == list(study.MERGE_COLUMNS) and list(df.r) == [0, 4, 8]
    assert df.macs_ratio.iloc[0] == 1.0 and df.macs.is_monotonic_decreasing
    for r, acc in zip(df.r, df.accuracy):
        m = tokens.merge_tokens(model, int(r))
        x = torch.stack([val[i][0] for i in range(len(val))])
        y = torch.tensor([val[i][1] for i in range(len(val))])
        with torch.no_grad():
            hand = (m(x).argmax(-1) == y).float().mean().item()
        assert acc == pytest.approx(hand, abs=1e-9)


def test_curve_can_be_cancelled(setup):
    model, val = setup
    stop = threading.Event()
    stop.set()
    with pytest.raises(study.Cancelled):
        study.merge_curve(model, val, [0, 4], cancel=stop)
