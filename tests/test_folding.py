"""Scale Folding computes the same function on the real model, and refuses models it cannot fold."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ramp.errors import RampError
from ramp.measure.folding import fold_model
from ramp.measure.calibration import CalibrationSpec
from ramp.measure.forward import Forward
from ramp.measure.profile import collect_activation_stats


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def tokens(model):
    return CalibrationSpec("austen", 128, 128).windows(model)


@pytest.fixture(scope="module")
def absmax(model, tokens):
    stats = collect_activation_stats(Forward(model), tokens)
    return {name: s.absmax for name, s in stats.items()}


def test_folded_model_gives_the_same_logits_on_real_text(model, absmax, tokens):
    folded = fold_model(model, absmax, alpha=0.5)
    before = Forward(model).logits(tokens).double()
    after = Forward(folded).logits(tokens).double()
    assert float((after - before).norm() / before.norm()) < 1e-5  # float32 rounding, nothing more
    # the fold really moved scale: norms and the weights they feed changed, the source model did not
    assert not np.allclose(folded.tensors["blk.3.attn_norm.weight"], model.tensors["blk.3.attn_norm.weight"])
    assert not np.allclose(folded.tensors["blk.3.ffn_down.weight"], model.tensors["blk.3.ffn_down.weight"])
    assert folded.sha256 != model.sha256


def test_alpha_one_flattens_activation_maxima(model, absmax, tokens):
    # with alpha = 1, s_j = max|X_j|: every folded input channel of q/k/v has max |x| = 1 on the same tokens
    folded = fold_model(model, absmax, alpha=1.0)
    stats = collect_activation_stats(Forward(folded), tokens)
    assert np.allclose(stats["blk.5.attn_q.weight"].absmax, 1.0, rtol=1e-3)
    assert np.allclose(stats["blk.5.ffn_gate.weight"].absmax, 1.0, rtol=1e-3)


def test_model_without_norm_linear_pairs_is_refused(model, absmax):
    broken = dict(model.tensors)
    del broken["blk.0.attn_norm.weight"]
    with pytest.raises(RampError, match="RMSNorm -> linear pairs"):
        fold_model(replace(model, tensors=broken), absmax)
    with pytest.raises(RampError, match=r"\[0, 1\]"):
        fold_model(model, absmax, alpha=1.5)
