"""The CAM against the release's equations, written out independently of llm4gen_core (in
``synthetic.release_reference``, float64; docs/reference.md section 3)."""
import dataclasses

import pytest
import torch

from llm4gen_core import CrossAdapter, CrossAdapterConfig, FeatureMismatchError, load_cross_adapter
from synthetic.cam import RELEASE, cam_state, write_projector_pth
from synthetic.release_reference import cam_fusion as reference_fusion

ODD = CrossAdapterConfig(clip_dim=40, llm_dim=24, heads=5, ffn_dim=56, depth=2)


@pytest.mark.parametrize("cfg,batch,tc,tl", [(RELEASE, 2, 77, 256), (ODD, 3, 7, 11)], ids=["release", "odd"])
def test_matches_reference_equations_fp32(tmp_path, cfg, batch, tc, tl):
    state = write_projector_pth(tmp_path / "projector.pth", cfg, seed=1)
    adapter = load_cross_adapter(tmp_path / "projector.pth", heads=cfg.heads)
    assert adapter.config == cfg
    g = torch.Generator().manual_seed(2)
    clip = torch.randn(batch, tc, cfg.clip_dim, generator=g)
    llm = torch.randn(batch, tl, cfg.llm_dim, generator=g)
    with torch.no_grad():
        fused = adapter(clip, llm)
    expected = reference_fusion(state, clip.double(), llm.double(), cfg.heads)
    assert fused.shape == (batch, tc + cfg.depth * tl, cfg.clip_dim)
    assert fused.dtype == torch.float32
    assert (fused.double() - expected).abs().max().item() < 1e-5
    assert torch.equal(fused[:, :tc], clip), "the CLIP tokens pass through unchanged"


# SDXL's per-token CLIP context (CLIP-L 768 + OpenCLIP bigG 1280, side by side) with RankGen's
# width; FFN kept small here, as every size is read from the file.
SDXL = CrossAdapterConfig(clip_dim=2048, llm_dim=2048, heads=8, ffn_dim=1024, depth=1)


def test_sdxl_width_context_with_heads_from_the_file(tmp_path):
    """[B, 77, 2048] + [B, 256, 2048] -> [B, 333, 2048] by the same equations, with 8 heads of 256
    from the file's metadata; another head count in the metadata is another function; a file
    without metadata (a plain .pth) gets the release's 8."""
    from llm4gen_core import save_cross_adapter

    state = cam_state(SDXL, seed=6)
    g = torch.Generator().manual_seed(7)
    clip, llm = torch.randn(1, 77, 2048, generator=g), torch.randn(1, 256, 2048, generator=g)
    fused = {}
    for heads in (8, 16):
        save_cross_adapter(state, tmp_path / f"sdxl-{heads}.safetensors", dataclasses.replace(SDXL, heads=heads))
        adapter = load_cross_adapter(tmp_path / f"sdxl-{heads}.safetensors")
        assert adapter.config == dataclasses.replace(SDXL, heads=heads)
        assert adapter.CrossFusionModule[0].heads == heads
        with torch.no_grad():
            fused[heads] = adapter(clip, llm)
        assert fused[heads].shape == (1, 333, 2048)
        expected = reference_fusion(state, clip, llm, heads)
        assert (fused[heads].double() - expected).abs().max().item() < 1e-5, heads
        assert torch.equal(fused[heads][:, :77], clip)
    assert (fused[8] - fused[16]).abs().max() > 1e-3, "the head count from the file changes the result"
    torch.save(state, tmp_path / "projector.pth")
    assert load_cross_adapter(tmp_path / "projector.pth").config == SDXL


def test_release_shape_is_333_tokens():
    adapter = CrossAdapter().eval()
    assert adapter.output_tokens(77, 256) == 333
    with torch.no_grad():
        assert adapter(torch.randn(1, 77, 768), torch.randn(1, 256, 2048)).shape == (1, 333, 768)


def test_q_norm_normalises_the_clip_side(tmp_path):
    """Swapping the two norms (the naming trap) must change the result."""
    state = cam_state(ODD, seed=3)
    swapped = dict(state)
    for kind in ("weight", "bias"):
        for i in range(ODD.depth):
            a, b = f"CrossFusionModule.{i}.q_norm.{kind}", f"CrossFusionModule.{i}.kv_norm.{kind}"
            swapped[a], swapped[b] = state[b], state[a]
    clip, llm = torch.randn(1, 5, ODD.clip_dim), torch.randn(1, 6, ODD.llm_dim)
    adapter = CrossAdapter(ODD).eval()
    adapter.load_state_dict(state)
    with torch.no_grad():
        fused = adapter(clip, llm)
    assert (fused.double() - reference_fusion(state, clip.double(), llm.double(), ODD.heads)).abs().max() < 1e-5
    assert (fused.double() - reference_fusion(swapped, clip.double(), llm.double(), ODD.heads)).abs().max() > 1e-3


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.7])
def test_strength_scales_only_the_llm_tokens(strength):
    state = cam_state(ODD, seed=4)
    adapter = CrossAdapter(ODD).eval()
    adapter.load_state_dict(state)
    clip, llm = torch.randn(2, 5, ODD.clip_dim), torch.randn(2, 6, ODD.llm_dim)
    with torch.no_grad():
        fused = adapter(clip, llm, strength=strength)
    expected = reference_fusion(state, clip.double(), llm.double(), ODD.heads, strength)
    assert (fused.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(dtype):
    cfg = CrossAdapterConfig(clip_dim=64, llm_dim=96, heads=8, ffn_dim=256)
    state = cam_state(cfg, seed=5)
    adapter = CrossAdapter(cfg).eval()
    adapter.load_state_dict(state)
    clip, llm = torch.randn(2, 77, 64) * 3, torch.randn(2, 64, 96) * 3
    with torch.no_grad():
        ref = adapter(clip, llm)
        half = adapter.to(dtype)(clip.to(dtype), llm.to(dtype))
    assert half.dtype == dtype
    assert torch.isfinite(half).all()
    assert (half.float() - ref).abs().max() < 0.25


def test_output_follows_input_dtype_not_module_dtype():
    adapter = CrossAdapter(ODD).eval()
    with torch.no_grad():
        out = adapter(torch.randn(1, 3, 40, dtype=torch.bfloat16), torch.randn(1, 4, 24, dtype=torch.float64))
    assert out.dtype == torch.bfloat16


def test_batch_one_broadcasts_both_ways():
    adapter = CrossAdapter(ODD).eval()
    clip, llm = torch.randn(3, 5, 40), torch.randn(1, 6, 24)
    with torch.no_grad():
        a = adapter(clip, llm)
        b = adapter(clip, llm.expand(3, -1, -1).clone())
        c = adapter(clip[:1], llm.expand(4, -1, -1))
    assert torch.allclose(a, b, atol=1e-6)
    assert c.shape[0] == 4


@pytest.mark.parametrize(
    "clip_shape,llm_shape,needle",
    [
        ((1, 77, 512), (1, 256, 24), "CLIP features are 512 wide"),
        ((1, 77, 40), (1, 256, 4096), "LLM features are 4096 wide"),
        ((2, 77, 40), (3, 256, 24), "batch sizes do not match"),
        ((77, 40), (1, 256, 24), "must be [batch, tokens"),
        ((1, 0, 40), (1, 256, 24), "must be [batch, tokens"),
    ],
)
def test_mismatched_features_give_clear_errors(clip_shape, llm_shape, needle):
    adapter = CrossAdapter(ODD).eval()
    with pytest.raises(FeatureMismatchError) as err:
        adapter(torch.randn(clip_shape), torch.randn(llm_shape))
    assert needle in str(err.value)


def test_integer_features_are_refused():
    adapter = CrossAdapter(ODD).eval()
    with pytest.raises(FeatureMismatchError, match="floating point"):
        adapter(torch.zeros(1, 3, 40, dtype=torch.long), torch.randn(1, 4, 24))


def test_config_rejects_heads_that_do_not_divide():
    with pytest.raises(ValueError, match="not divisible"):
        CrossAdapterConfig(clip_dim=40, heads=3)
