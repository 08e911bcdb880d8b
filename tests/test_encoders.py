"""Vision encoder registry and the timm / open_clip families, on tiny random models (no downloads)."""
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mmllm.config import ConfigError, EncoderConfig
from mmllm.encoders import ENCODERS, VisionEncoder, build_encoder

# Lists, as the options arrive from YAML/JSON.
TIMM_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [8, 8]}
OPEN_CLIP_TEXT = {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}
OPEN_CLIP_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"width": 32, "layers": 1, "patch_size": 8, "head_width": 16},
    "text_cfg": OPEN_CLIP_TEXT,
}
TALL_NARROW = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": [16, 4]}  # the project's CPU default


def timm_cfg(image_size=32, options=TIMM_VIT, model="vit_tiny_patch16_224", **kw) -> EncoderConfig:
    return EncoderConfig(family="timm", model=model, image_size=image_size, options=options, **kw)


def open_clip_cfg(image_size=32, options=OPEN_CLIP_VIT, model="ViT-B-32", **kw) -> EncoderConfig:
    return EncoderConfig(family="open_clip", model=model, image_size=image_size, options=options, **kw)


FAMILIES = {"timm": timm_cfg, "open_clip": open_clip_cfg}
WIDTH = {"timm": TIMM_VIT["embed_dim"], "open_clip": OPEN_CLIP_VIT["vision_cfg"]["width"]}


def build(cfg: EncoderConfig, seed: int = 0) -> VisionEncoder:
    torch.manual_seed(seed)
    return build_encoder(cfg).eval()


def test_registry_names_and_unknown_family():
    assert set(ENCODERS) == {"timm", "open_clip"}
    with pytest.raises(ConfigError, match="encoder.family.*'clip'.*timm, open_clip"):
        build_encoder(EncoderConfig(family="clip"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("image_size", [32, 64, [32, 64]])
def test_vit_shapes_and_geometry(family, image_size):
    enc = build(FAMILIES[family](image_size))
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert enc.family == family
    assert enc.image_size == (h, w)
    assert enc.grid == (h // 8, w // 8)
    assert enc.dim == WIDTH[family]
    out = enc(torch.randn(2, 3, h, w))
    assert out.shape == (2, enc.grid[0] * enc.grid[1], enc.dim)


def test_timm_output_is_patch_tokens_without_prefix():
    enc = build(timm_cfg(options={**TIMM_VIT, "reg_tokens": 2}))  # class + 2 register tokens
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = enc.model.forward_features(x)
        out = enc(x)
    assert full.shape[1] == 3 + 16 and out.shape[1] == 16
    torch.testing.assert_close(out, full[:, 3:], rtol=0, atol=0)


def test_open_clip_output_is_patch_tokens_without_class_token():
    enc = build(open_clip_cfg())
    x = torch.randn(2, 3, 32, 32)
    enc.model.output_tokens = True  # open_clip's other token API: (pooled, tokens without class)
    with torch.no_grad():
        _, tokens = enc.model(x)
        out = enc(x)
    assert out.shape[1] == 16
    torch.testing.assert_close(out, tokens)


def test_tokens_are_row_major():
    """With no transformer blocks each token sees only its own patch: changing patch (r, c) changes token r*cols+c.

    (open_clip needs at least one block; its order is checked against its own token API above.)
    """
    enc = build(timm_cfg(options={**TALL_NARROW, "depth": 0}))
    rows, cols = enc.grid
    assert (rows, cols) == (2, 8)
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 16:32, 8:12] += 1.0  # patch (1, 2)
    with torch.no_grad():
        changed = (enc(x) - enc(y)).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * cols + 2]


def test_tall_narrow_default_config():
    enc = build(timm_cfg(options=TALL_NARROW))
    assert enc.grid == (2, 8) and enc.dim == 64
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)
    assert 100_000 <= sum(p.numel() for p in enc.parameters()) <= 120_000


def test_timm_conv_models_flatten_feature_maps():
    resnet = build(timm_cfg(image_size=[64, 96], model="resnet18", options={}))
    assert (resnet.grid, resnet.dim) == ((2, 3), 512)
    assert resnet(torch.randn(1, 3, 64, 96)).shape == (1, 6, 512)
    swin_opts = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "window_size": 4}
    swin = build(timm_cfg(image_size=[32, 64], model="swin_tiny_patch4_window7_224", options=swin_opts))
    assert (swin.grid, swin.dim) == ((4, 8), 32)  # forward_features is NHWC here
    assert swin(torch.randn(1, 3, 32, 64)).shape == (1, 32, 32)


def test_open_clip_resnet_tower():
    options = {"embed_dim": 32, "vision_cfg": {"width": 8, "layers": [1, 1, 1, 1]}, "text_cfg": OPEN_CLIP_TEXT}
    enc = build(open_clip_cfg(image_size=64, model="RN50", options=options))
    assert (enc.grid, enc.dim) == ((2, 2), 256)
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 4, 256)


def test_geometry_probe_leaves_training_mode_and_batchnorm_alone():
    enc = build_encoder(timm_cfg(model="resnet18", options={}))
    assert enc.training
    assert all(bn.num_batches_tracked == 0 for bn in enc.modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_timm_local_weights_round_trip(tmp_path):
    source = build(timm_cfg(), seed=0)
    path = tmp_path / "vit.safetensors"
    save_file(source.model.state_dict(), str(path))
    loaded = build(timm_cfg(pretrained=str(path)), seed=1)
    fresh = build(timm_cfg(), seed=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
        assert not torch.allclose(fresh(x), source(x))


def test_open_clip_local_weights_round_trip(tmp_path):
    torch.manual_seed(0)  # a whole CLIP model, as open_clip checkpoints hold one
    vision_cfg = {**OPEN_CLIP_VIT["vision_cfg"], "image_size": 32}
    clip = open_clip.create_model("ViT-B-32", **{**OPEN_CLIP_VIT, "vision_cfg": vision_cfg}).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file(clip.state_dict(), str(path))
    loaded = build(open_clip_cfg(pretrained=str(path)), seed=1)
    fresh = build(open_clip_cfg(), seed=1)
    x = torch.randn(2, 3, 32, 32)
    clip.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = clip.visual(x)
        torch.testing.assert_close(loaded(x), tokens, rtol=0, atol=0)
        assert not torch.allclose(fresh(x), tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_weights_file_is_a_config_error(family, tmp_path):
    with pytest.raises(ConfigError, match="no weights file"):
        build_encoder(FAMILIES[family](pretrained=str(tmp_path / "missing.safetensors")))


def test_normalisation_comes_from_the_library_config():
    vit, resnet = build(timm_cfg()), build(timm_cfg(model="resnet18", options={}))
    clip = build(open_clip_cfg())
    assert vit.mean == vit.std == (0.5, 0.5, 0.5)  # timm's default vit_tiny weights (AugReg) use 0.5
    assert (resnet.mean, resnet.std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert (clip.mean, clip.std) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert len({vit.mean, resnet.mean, clip.mean}) == 3


def test_bad_configs_and_inputs():
    with pytest.raises(ConfigError, match="open_clip model 'ViT-nope'"):
        build_encoder(open_clip_cfg(model="ViT-nope"))
    with pytest.raises(ConfigError, match="image_size"):
        build_encoder(timm_cfg(image_size=[32]))
    enc = build(timm_cfg())
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        enc(torch.randn(1, 3, 64, 64))
