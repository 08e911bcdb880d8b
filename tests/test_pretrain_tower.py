from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from mmllm.config import EncoderConfig
from mmllm.encoders import build_encoder
from mmllm.train.cache import RECIPE_FILE
from mmllm.train.pretrain_tower import (ENCODER_FILE, REPORT_FILE, WEIGHTS, Report, TowerRecipe, encoder_config,
                                        main, make_pair, normalise, pretrained_tower, retrieval, save_tower,
                                        train_tower)

# Seconds, not minutes: a narrower tower and caption encoder, few pairs and steps.
TINY = TowerRecipe(steps=150, batch_size=64, chart_renders=16, lr=3e-3, warmup_steps=5, embed_dim=32, text_width=32,
                   encoder=EncoderConfig(feature_layer=-1, options={"embed_dim": 32, "depth": 2, "num_heads": 2,
                                                                    "patch_size": [32, 16]}),
                   heldout=128, candidates=32, probe_train=64, probe_test=32)


@pytest.fixture(scope="module")
def trained():
    return train_tower(TINY)


def test_the_saved_tower_loads_through_build_encoder_with_the_trained_weights_and_features(trained, tmp_path):
    save_tower(trained.tower, TINY.encoder, tmp_path)
    loaded = build_encoder(replace(TINY.encoder, pretrained=str(tmp_path / WEIGHTS))).eval()
    assert loaded.state_dict().keys() == trained.tower.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.tower.state_dict().items())
    # encoder.json says the same, with the normalisation the tower was trained under
    assert encoder_config(tmp_path) == replace(TINY.encoder, pretrained=str(tmp_path / WEIGHTS), mean=[0.5] * 3,
                                               std=[0.5] * 3)
    tiles = normalise(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), loaded)
    with torch.no_grad():
        assert torch.equal(loaded(tiles), trained.tower(tiles))


def test_a_tower_cut_before_its_last_block_saves_the_keys_timm_expects_and_loads_the_same(tmp_path):
    recipe = replace(TINY, steps=2, batch_size=16, encoder=replace(TINY.encoder, feature_layer=-2))
    tower = train_tower(recipe).tower
    save_tower(tower, recipe.encoder, tmp_path)
    saved = load_file(tmp_path / WEIGHTS)
    assert {"norm.weight", "blocks.1.attn.qkv.weight"} <= saved.keys()  # what the tower cut, kept for timm's loader
    loaded = build_encoder(encoder_config(tmp_path)).eval()
    tiles = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(tiles), tower(tiles))


def test_the_same_recipe_gives_the_same_weights_and_another_seed_does_not(trained):
    again = train_tower(TINY).tower
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trained.tower.state_dict().items())
    other = train_tower(replace(TINY, seed=1)).tower
    assert not torch.equal(other.state_dict()["model.patch_embed.proj.weight"], trained.tower.state_dict()["model.patch_embed.proj.weight"])


def test_a_short_run_lowers_the_loss_and_retrieves_held_out_captions_well_above_chance(trained):
    first, last = sum(trained.losses[:5]) / 5, sum(trained.losses[-5:]) / 5
    assert last < 0.6 * first
    top1, chance = retrieval(trained.tower, trained.contrast, TINY)
    assert 1 / 32 <= chance < 0.06 and top1 > 3 * chance


def test_pairs_are_deterministic_per_seed_and_index_and_every_kind_appears():
    def key(pair):
        return pair.image.tobytes(), pair.caption, pair.kind

    pairs = [make_pair(TINY, i) for i in range(40)]
    assert [key(p) for p in pairs] == [key(make_pair(TINY, i)) for i in range(40)]
    assert sum(key(p) != key(make_pair(replace(TINY, seed=1), i)) for i, p in enumerate(pairs)) >= 35
    assert sum(key(p) != key(make_pair(TINY, i, split="heldout")) for i, p in enumerate(pairs)) >= 35
    assert {p.kind for p in pairs} == {"line", "chart", "scene"}
    assert all(p.image.size == (32, 32) and p.image.mode == "RGB" and p.caption for p in pairs)
    assert make_pair(replace(TINY, encoder=replace(TINY.encoder, image_size=48)), 3).image.size == (48, 48)


def test_pretrained_tower_builds_once_and_then_reuses_its_folder(tmp_path):
    recipe = replace(TINY, steps=3, batch_size=16, heldout=32)
    folder = pretrained_tower(recipe, root=tmp_path)
    assert {p.name for p in folder.iterdir()} == {WEIGHTS, ENCODER_FILE, REPORT_FILE, RECIPE_FILE}
    report = Report.load(folder)
    assert report.recipe == recipe and report.first_loss > 0 and 0 <= report.retrieval_top1 <= 1
    made = (folder / WEIGHTS).stat().st_mtime_ns
    assert pretrained_tower(recipe, root=tmp_path) == folder and (folder / WEIGHTS).stat().st_mtime_ns == made
    assert pretrained_tower(replace(recipe, seed=1), root=tmp_path) != folder


def test_the_command_takes_every_recipe_field_nested_ones_too_and_says_where_the_tower_is(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--steps", "2", "--batch_size", "16", "--chart_renders", "4", "--embed_dim", "32",
            "--text_width", "32", "--heldout", "32", "--candidates", "8", "--probe_train", "16", "--probe_test", "8",
            "--encoder.options", '{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [32, 16]}']
    report = main(args)
    out = capsys.readouterr().out
    assert f"tower: {tmp_path}" in out and "retrieval top-1" in out and "glyph probe" in out
    assert report.recipe.encoder.options["depth"] == 1 and report.recipe.steps == 2
    assert report.recipe == replace(TowerRecipe(), steps=2, batch_size=16, chart_renders=4, embed_dim=32,
                                    text_width=32, heldout=32, candidates=8, probe_train=16, probe_test=8,
                                    encoder=replace(TowerRecipe().encoder, options=report.recipe.encoder.options))
    out_folder = tmp_path / "new"
    assert main([*args, "--out", str(out_folder)]).recipe == report.recipe and (out_folder / WEIGHTS).is_file()
    with pytest.raises(SystemExit):
        main(["--steps", "x"])
    assert "steps" in capsys.readouterr().err
