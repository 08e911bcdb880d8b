"""`mmllm controls`: the same model scored with the image signal taken apart."""
import torch

from mmllm.eval.controls import controls, swap_tiles
from mmllm.model import MMLLM
from mmllm.train.synth import synthesize_once


def test_swap_tiles_trades_the_first_and_third_tile_of_each_image_that_has_them(tiny_config, text_image):
    torch.manual_seed(0)
    model = MMLLM(tiny_config())
    proc = model.processor
    samples = [proc.encode_prompt("Q?", [text_image("abcd")]), proc.encode_prompt("Q?", [text_image("x", (32, 32))])]
    inputs = proc.collate(samples)
    swapped = swap_tiles(inputs, [n for s in samples for n in s.tiles_per_image])
    before, after = inputs.pixel_values, swapped.pixel_values
    assert [s.tiles_per_image for s in samples] == [[5], [1]]
    assert torch.equal(after[0], before[2]) and torch.equal(after[2], before[0])
    assert torch.equal(after[1], before[1]) and torch.equal(after[3:], before[3:])  # thumbnail, lone tile kept


def test_controls_score_every_variant_on_the_same_items(tmp_path, tiny_config):
    data = tmp_path / "ocr"
    synthesize_once("ocr", data, 6, seed=0, level="easy")
    rows = {}
    for arch in ("nvlm_d", "nvlm_x"):
        torch.manual_seed(0)
        MMLLM(tiny_config(arch=arch)).save_pretrained(tmp_path / arch)
        model = MMLLM.from_pretrained(tmp_path / arch)
        rows[arch] = {r["control"]: r for r in controls(model, str(data), batch_size=4)}
    assert all(r["n"] == 6 for table in rows.values() for r in table.values())
    assert "one tile" in rows["nvlm_d"] and "one tile" in rows["nvlm_x"]
    assert {r["n"] for r in controls(model, data, batch_size=4, limit=3)} == {3}
    assert "no tile identity" in rows["nvlm_x"] and "no tile identity" not in rows["nvlm_d"]
    # D has no gates: switching cross-attention off changes nothing; X at gate 0 is the model as built.
    assert rows["nvlm_d"]["cross-attention off"]["cer"] == rows["nvlm_d"]["as trained"]["cer"]
    assert rows["nvlm_x"]["cross-attention off"]["cer"] == rows["nvlm_x"]["as trained"]["cer"]
