"""Vision encoder registry and the timm / open_clip / hf families, on tiny random models (no downloads)."""
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel
from transformers.utils.constants import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mmllm.config import ConfigError, EncoderConfig
from mmllm.encoders import ENCODERS, VisionEncoder, build_encoder, tower_shape

# Lists, as the options arrive from YAML/JSON. Two blocks each, so the default feature_layer -2 keeps one.
TIMM_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": [8, 8]}
OPEN_CLIP_TEXT = {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}
OPEN_CLIP_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"width": 32, "layers": 2, "patch_size": 8, "head_width": 16},
    "text_cfg": OPEN_CLIP_TEXT,
}
HF_VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}
TALL_NARROW = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": [16, 4]}  # the project's CPU default
DISTINCT_MEAN, DISTINCT_STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]  # no library default looks like this


def timm_cfg(image_size=32, options=TIMM_VIT, model="vit_tiny_patch16_224", **kw) -> EncoderConfig:
    return EncoderConfig(family="timm", model=model, image_size=image_size, options=options, **kw)


def open_clip_cfg(image_size=32, options=OPEN_CLIP_VIT, model="ViT-B-32", **kw) -> EncoderConfig:
    return EncoderConfig(family="open_clip", model=model, image_size=image_size, options=options, **kw)


def hf_cfg(image_size=32, options=HF_VIT, model="clip_vision_model", **kw) -> EncoderConfig:
    return EncoderConfig(family="hf", model=model, image_size=image_size, options=options, **kw)


FAMILIES = {"timm": timm_cfg, "open_clip": open_clip_cfg, "hf": hf_cfg}
WIDTH = {"timm": TIMM_VIT["embed_dim"], "open_clip": OPEN_CLIP_VIT["vision_cfg"]["width"], "hf": HF_VIT["hidden_size"]}
BLOCKS = {  # each library's list of transformer blocks
    "timm": lambda model: model.blocks,
    "open_clip": lambda model: model.transformer.resblocks,
    "hf": lambda model: model.encoder.layers,
}
PENULTIMATE = {  # each library's own output of block -2, as patch tokens [B, h*w, C]
    "timm": lambda model, x: model.forward_intermediates(x, indices=[-2], intermediates_only=True, output_fmt="NLC")[0],
    "open_clip": lambda model, x: model.forward_intermediates(
        x, indices=[-2], intermediates_only=True, output_fmt="NLC"
    )["image_intermediates"][0],
    "hf": lambda model, x: model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:],  # CLIP class token
}


def build(cfg: EncoderConfig, seed: int = 0) -> VisionEncoder:
    torch.manual_seed(seed)
    return build_encoder(cfg).eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_names_and_unknown_family():
    assert set(ENCODERS) == {"timm", "open_clip", "hf"}
    with pytest.raises(ConfigError, match="encoder.family.*'clip'.*timm, open_clip, hf"):
        build_encoder(EncoderConfig(family="clip"))


@pytest.mark.parametrize("family", ["timm", "open_clip"])
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


@pytest.mark.parametrize("model", ["clip_vision_model", "siglip_vision_model"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_hf_shapes_and_geometry(model, image_size):
    enc = build(hf_cfg(image_size, model=model))
    assert (enc.family, enc.image_size, enc.grid, enc.dim) == ("hf", (image_size,) * 2, (image_size // 8,) * 2, 32)
    assert enc(torch.randn(2, 3, image_size, image_size)).shape == (2, (image_size // 8) ** 2, 32)


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


@pytest.mark.parametrize(("model", "prefix"), [("clip_vision_model", 1), ("siglip_vision_model", 0)])
def test_hf_output_drops_the_class_token_where_there_is_one(model, prefix):
    enc = build(hf_cfg(model=model))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = enc.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        out = enc(x)
    assert enc.num_prefix_tokens == prefix and hidden.shape[1] == prefix + 16
    torch.testing.assert_close(out, hidden[:, prefix:], rtol=0, atol=0)


def test_tokens_are_row_major():
    """With its block made the identity each token sees only its own patch: changing patch (r, c) changes token r*cols+c.

    (The other families' order is checked against their own token APIs.)
    """
    enc = build(timm_cfg(options={**TALL_NARROW, "depth": 1}, feature_layer=-1))
    enc.model.blocks[0] = torch.nn.Identity()
    rows, cols = enc.grid
    assert (rows, cols) == (2, 8)
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 16:32, 8:12] += 1.0  # patch (1, 2)
    with torch.no_grad():
        changed = (enc(x) - enc(y)).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * cols + 2]


def test_tall_narrow_default_config():
    enc = build(timm_cfg(options=TALL_NARROW, feature_layer=-1))  # as configs/nvlm_d_tiny.yaml
    assert enc.grid == (2, 8) and enc.dim == 64
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)
    assert 100_000 <= n_params(enc) <= 120_000
    penultimate = build(timm_cfg(options=TALL_NARROW))  # the dataclass default, -2: one block left
    assert len(penultimate.model.blocks) == 1
    assert penultimate(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_layer_removes_later_blocks_and_matches_the_library(family):
    full, short = build(FAMILIES[family](feature_layer=-1)), build(FAMILIES[family](feature_layer=-2))
    blocks = BLOCKS[family]
    assert len(blocks(full.model)) == 2 and len(blocks(short.model)) == 1
    assert n_params(full) - n_params(short) == n_params(blocks(full.model)[-1])
    full_state = full.state_dict()  # the short tower is the full one minus its tail, weights and all
    assert all(torch.equal(full_state[name], value) for name, value in short.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = PENULTIMATE[family](full.model, x)
        torch.testing.assert_close(short(x), expected, rtol=0, atol=0)
        assert not torch.allclose(full(x), expected)


SHAPED = [
    timm_cfg(),
    timm_cfg(model="resnet18", options={}),
    timm_cfg(image_size=[64, 96], model="resnet18", options={}, feature_layer=-1),
    open_clip_cfg(),
    hf_cfg(),
    hf_cfg(model="siglip_vision_model", mean=DISTINCT_MEAN, std=DISTINCT_STD),
]


@pytest.mark.parametrize("cfg", SHAPED, ids=["timm-vit", "timm-resnet", "timm-resnet-oblong", "open_clip-vit", "hf-clip",
                                             "hf-siglip-own-mean"])
def test_a_towers_shape_from_its_config_equals_the_built_towers(cfg):
    """What the processor needs (tile, grid, width, mean/std) without building weights: on the meta device."""
    shape = tower_shape(cfg)
    assert shape == build(cfg).shape


def test_a_towers_shape_reads_no_weight_file_but_the_normalisation_saved_beside_it(tmp_path):
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(tmp_path / "hf")
    CLIPImageProcessor(image_mean=DISTINCT_MEAN, image_std=DISTINCT_STD).save_pretrained(tmp_path / "hf")
    broken = b"not a weight file"
    (tmp_path / "hf" / "model.safetensors").write_bytes(broken)
    (tmp_path / "timm.safetensors").write_bytes(broken)
    for cfg in (hf_cfg(model="unused-with-a-directory", pretrained=str(tmp_path / "hf")),
                timm_cfg(pretrained=str(tmp_path / "timm.safetensors"))):
        with pytest.raises(Exception):
            build_encoder(cfg)  # the real build reads the (broken) weights
        shape = tower_shape(cfg)
        assert shape.grid == (4, 4) and shape.dim == 32
    assert tower_shape(hf_cfg(model="unused", pretrained=str(tmp_path / "hf"))).mean == tuple(DISTINCT_MEAN)


def test_an_open_clip_towers_shape_takes_the_normalisation_of_its_pretrained_tag():
    """PE-Core's tag normalises with 0.5 where the model config says OpenAI's statistics; nothing is downloaded."""
    tagged = tower_shape(open_clip_cfg(image_size=224, model="PE-Core-B-16", options={}, pretrained=True))
    untagged = tower_shape(open_clip_cfg(image_size=224, model="PE-Core-B-16", options={}))
    assert (tagged.mean, tagged.std) == ((0.5,) * 3, (0.5,) * 3)
    assert (untagged.mean, untagged.std) == (tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))
    assert tagged.grid == untagged.grid == (14, 14)


@pytest.mark.parametrize(
    "cfg",
    [
        timm_cfg(),
        timm_cfg(model="resnet18", options={}),
        open_clip_cfg(),
        open_clip_cfg(model="convnext_base", options={"embed_dim": 16, "vision_cfg": {"timm_model_name": "test_convnext"},
                                                      "text_cfg": OPEN_CLIP_TEXT}),
        hf_cfg(),
        hf_cfg(model="siglip_vision_model"),
    ],
    ids=["timm-vit", "timm-resnet", "open_clip-vit", "open_clip-timm", "hf-clip", "hf-siglip"],
)
def test_every_parameter_left_gets_a_gradient(cfg):
    """No pruned-away block, final norm or pooling head stays behind: DDP needs no find_unused_parameters."""
    enc = build(cfg)
    enc(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert [name for name, p in enc.named_parameters() if p.grad is None] == []


def test_timm_conv_models_flatten_feature_maps_at_the_chosen_stage():
    resnet = build(timm_cfg(image_size=[64, 96], model="resnet18", options={}, feature_layer=-1))
    assert (resnet.grid, resnet.dim) == ((2, 3), 512)
    assert resnet(torch.randn(1, 3, 64, 96)).shape == (1, 6, 512)
    layer3 = build(timm_cfg(image_size=[64, 96], model="resnet18", options={}))  # -2: stride 16, layer4 removed
    assert (layer3.grid, layer3.dim) == ((4, 6), 256)
    assert len(layer3.model.layer4) == 0
    swin_opts = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "window_size": 4}
    swin = build(timm_cfg(image_size=[32, 64], model="swin_tiny_patch4_window7_224", options=swin_opts, feature_layer=-1))
    assert (swin.grid, swin.dim) == ((4, 8), 32)  # forward_features is NHWC here
    assert swin(torch.randn(1, 3, 32, 64)).shape == (1, 32, 32)


def test_open_clip_resnet_tower_gives_its_last_stage_only():
    options = {"embed_dim": 32, "vision_cfg": {"width": 8, "layers": [1, 1, 1, 1]}, "text_cfg": OPEN_CLIP_TEXT}
    enc = build(open_clip_cfg(image_size=64, model="RN50", options=options, feature_layer=-1))
    assert (enc.grid, enc.dim) == ((2, 2), 256)
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 4, 256)
    assert enc.model.attnpool is None
    with pytest.raises(ConfigError, match="ModifiedResNet.*only encoder.feature_layer -1"):
        build_encoder(open_clip_cfg(image_size=64, model="RN50", options=options))


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
    with torch.no_grad():
        tokens = PENULTIMATE["open_clip"](clip.visual, x)
        torch.testing.assert_close(loaded(x), tokens, rtol=0, atol=0)
        assert not torch.allclose(fresh(x), tokens)


def tiny_clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(image_size=32, **HF_VIT)


def test_hf_local_directory_round_trip(tmp_path):
    torch.manual_seed(0)
    saved = CLIPVisionModel(tiny_clip_vision_config()).eval()
    saved.save_pretrained(tmp_path)
    CLIPImageProcessor(image_mean=DISTINCT_MEAN, image_std=DISTINCT_STD).save_pretrained(tmp_path)
    loaded = build(hf_cfg(model="unused-with-a-directory", pretrained=str(tmp_path)), seed=1)
    fresh = build(hf_cfg(), seed=1)
    assert (loaded.mean, loaded.std) == (tuple(DISTINCT_MEAN), tuple(DISTINCT_STD))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = PENULTIMATE["hf"](saved, x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        assert not torch.allclose(fresh(x), expected)


def test_mmllm_with_an_hf_tower_from_a_directory_reloads_offline(tmp_path, tiny_config, text_image):
    """The tower's directory is not needed again: its architecture and normalisation travel in config.json."""
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(tmp_path / "tower")
    CLIPImageProcessor(image_mean=DISTINCT_MEAN, image_std=DISTINCT_STD).save_pretrained(tmp_path / "tower")
    model = MMLLM(tiny_config(encoder=hf_cfg(model="unused-with-a-directory", pretrained=str(tmp_path / "tower")))).eval()
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "tower" / "model.safetensors").unlink()
    loaded = MMLLM.from_pretrained(tmp_path / "saved")
    assert (loaded.encoder.mean, loaded.encoder.std) == (tuple(DISTINCT_MEAN), tuple(DISTINCT_STD))
    batch = model.processor.collate([model.processor.encode_prompt("Read it.", [text_image("ab")])])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits)


def test_mean_and_std_in_the_config_override_the_library_and_are_checked():
    assert build(timm_cfg(mean=DISTINCT_MEAN, std=DISTINCT_STD)).mean == tuple(DISTINCT_MEAN)
    with pytest.raises(ConfigError, match="encoder.std needs 3 values"):
        build(timm_cfg(std=[0.5]))


def test_hf_full_clip_directory_keeps_the_vision_tower(tmp_path):
    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    clip = CLIPModel(CLIPConfig(vision_config=tiny_clip_vision_config().to_dict(), text_config=text, projection_dim=16))
    clip.eval().save_pretrained(tmp_path)  # no image processor saved: mean/std are CLIP's defaults
    loaded = build(hf_cfg(pretrained=str(tmp_path)))
    assert (loaded.mean, loaded.std) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
    assert not any(name.startswith("text") for name, _ in loaded.model.named_modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), PENULTIMATE["hf"](clip.vision_model, x), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_weights_is_a_config_error(family, tmp_path):
    with pytest.raises(ConfigError, match="no weights (file|directory)"):
        build_encoder(FAMILIES[family](pretrained=str(tmp_path / "missing")))


def test_normalisation_comes_from_the_library_config(tmp_path):
    vit, resnet = build(timm_cfg()), build(timm_cfg(model="resnet18", options={}))
    clip = build(open_clip_cfg())
    hf_clip, hf_siglip = build(hf_cfg()), build(hf_cfg(model="siglip_vision_model"))
    torch.manual_seed(0)
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(tmp_path)
    CLIPImageProcessor(image_mean=DISTINCT_MEAN, image_std=DISTINCT_STD).save_pretrained(tmp_path)
    hf_saved = build(hf_cfg(pretrained=str(tmp_path)))
    assert vit.mean == vit.std == (0.5, 0.5, 0.5)  # timm's default vit_tiny weights (AugReg) use 0.5
    assert (resnet.mean, resnet.std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert (clip.mean, clip.std) == (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert (hf_clip.mean, hf_clip.std) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
    assert (hf_siglip.mean, hf_siglip.std) == (tuple(IMAGENET_STANDARD_MEAN), tuple(IMAGENET_STANDARD_STD))
    assert (hf_saved.mean, hf_saved.std) == (tuple(DISTINCT_MEAN), tuple(DISTINCT_STD))
    assert len({vit.mean, resnet.mean, clip.mean, hf_saved.mean}) == 4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [2, -3])
def test_feature_layer_out_of_range_is_a_config_error(family, layer):
    with pytest.raises(ConfigError, match=rf"feature_layer {layer} is out of range: .* 2 layers, .* -2\.\.1"):
        build_encoder(FAMILIES[family](feature_layer=layer))


def test_bad_configs_and_inputs(tmp_path):
    with pytest.raises(ConfigError, match="open_clip model 'ViT-nope'"):
        build_encoder(open_clip_cfg(model="ViT-nope"))
    with pytest.raises(ConfigError, match="image_size"):
        build_encoder(timm_cfg(image_size=[32]))
    with pytest.raises(ConfigError, match="unknown hf model type 'vit_nope'.*clip_vision_model"):
        build_encoder(hf_cfg(model="vit_nope"))
    with pytest.raises(ConfigError, match="'bert' is not a vision tower"):
        build_encoder(hf_cfg(model="bert", options={}))
    with pytest.raises(ConfigError, match="not a multiple of the number of attention heads"):
        build_encoder(hf_cfg(options={**HF_VIT, "num_attention_heads": 3}))
    with pytest.raises(ConfigError, match="square tiles"):
        build_encoder(hf_cfg(image_size=[32, 64]))
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="image_size 64 differs .* 32"):
        build_encoder(hf_cfg(image_size=64, pretrained=str(tmp_path)))
    enc = build(timm_cfg())
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        enc(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_recomputes_each_block_and_changes_no_gradient(family):
    plain, ckpt = build(FAMILIES[family]()).train(), build(FAMILIES[family]()).train()
    ckpt.set_gradient_checkpointing(True)
    block = BLOCKS[family](ckpt.model)[0]
    inner = next(m for m in block.children() if any(True for _ in m.parameters()))  # e.g. its attention
    calls, forward = [], inner.forward
    inner.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    pixels = torch.randn(2, 3, 32, 32)
    plain(pixels).square().sum().backward()
    ckpt(pixels).square().sum().backward()
    assert len(calls) == 2  # forward, then again for the backward pass
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
