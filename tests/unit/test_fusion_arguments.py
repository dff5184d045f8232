"""Values a workflow's JSON can carry into the fusion that are not numbers it can use."""
import pytest
import torch

from llm4gen_core import CrossAdapter, CrossAdapterConfig, FeatureMismatchError

SMALL = CrossAdapterConfig(clip_dim=16, llm_dim=8, heads=2, ffn_dim=32)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf"), "1.0", None, True, torch.tensor(1.0)])
def test_strength_that_is_not_a_finite_number_is_refused(strength):
    adapter = CrossAdapter(SMALL).eval()
    with pytest.raises(FeatureMismatchError, match="strength must be a finite number"):
        adapter(torch.randn(1, 3, 16), torch.randn(1, 4, 8), strength=strength)


def test_finite_strengths_of_any_real_type_work():
    import numpy as np

    adapter = CrossAdapter(SMALL).eval()
    clip, llm = torch.randn(1, 3, 16), torch.randn(1, 4, 8)
    with torch.no_grad():
        reference = adapter(clip, llm, strength=0.5)
        for strength in (np.float32(0.5), np.float64(0.5), 0.5):
            assert torch.equal(adapter(clip, llm, strength=strength), reference)
        assert torch.equal(adapter(clip, llm, strength=1)[:, 3:], adapter(clip, llm)[:, 3:])
