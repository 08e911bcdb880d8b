"""`mmllm controls`: is it the model or the wiring? Score a trained model on an OCR set with the signal
taken apart, one control at a time.

- `as trained`: the model as saved.
- `tiles 0<->2 swapped`: the pixels of the first and third tile of every image trade places; a model
  that knows which tile it reads now reads the glyphs out of order.
- `images shuffled`: every question gets another item's image (a fixed rotation): scores should
  collapse to what guessing from the text gives.
- `cross-attention off`: every gate at 0, so X and H see the image only through what is in the
  sequence (nothing for X, the thumbnail for H); D has no gates and is unchanged.
- `no tile identity`: the learned tile table at 0 (X and H with `tile_identity: learned`).
- `one tile`: every image shrunk into a single tile, the global view (the thumbnail's resolution): what the
  full-resolution tiles add.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch

from mmllm.eval.metrics import corpus_cer, score
from mmllm.eval.report import markdown_table
from mmllm.model import MMLLM
from mmllm.sample import ModelInputs
from mmllm.train.items import ItemsDataset, PromptCollator
from mmllm.train.media import paths_of


def swap_tiles(inputs: ModelInputs, tiles_per_image: list[int], a: int = 0, b: int = 2) -> ModelInputs:
    """Swap tiles a and b of every image that has more than max(a, b) + 1 tiles (the thumbnail stays last)."""
    pixels, start = inputs.pixel_values.clone(), 0
    for n in tiles_per_image:
        if n > max(a, b) + 1:
            pixels[[start + a, start + b]] = pixels[[start + b, start + a]]
        start += n
    return replace(inputs, pixel_values=pixels)


def without_cross_attention(model: MMLLM) -> MMLLM:
    off = copy.deepcopy(model)
    with torch.no_grad():
        for block in off.cross_blocks().values():
            block.attn_gate.zero_()
            block.ffn_gate.zero_()
    return off


def without_tile_identity(model: MMLLM) -> MMLLM | None:
    if model.tile_embedding is None:
        return None
    off = copy.deepcopy(model)
    with torch.no_grad():
        off.tile_embedding.zero_()
    return off


def predict(model: MMLLM, items: ItemsDataset, batch_size: int, n: int, shuffle_images: bool = False,
            swap: bool = False) -> list[str]:
    """Greedy answers to the first `n` items; with `shuffle_images` item i is asked about item i+1's image."""
    samples = []
    for i in range(n):
        item = items[i]
        if shuffle_images:
            other = items.records[(i + 1) % n]
            images = [items.processor.load_image(p) for p in paths_of(other, "image")]
            question = str(item.record.data["question"]).strip()
            item = replace(item, sample=items.processor.encode_prompt(question, images))
        if item.sample is None:
            raise ValueError(f"bad item {item.error}: controls need a clean set")
        samples.append(item)
    out = []
    collate = PromptCollator(items.processor)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = collate(chunk)
        inputs = batch.inputs
        if swap:
            inputs = swap_tiles(inputs, [n for it in chunk for n in it.sample.tiles_per_image])
        ids = model.generate(inputs, max_new_tokens=32)
        out += [model.processor.decode(row) for row in ids.tolist()]
    return out


def controls(model: MMLLM, data: str | Path, batch_size: int = 32, limit: int | None = None) -> list[dict]:
    """One row per control: exact match and corpus CER on the first `limit` items of `data` (an eval folder or
    items.jsonl; all of them without a limit)."""
    torch.manual_seed(0)
    path = Path(data)
    items_file = path / "items.jsonl" if path.is_dir() else path
    items = ItemsDataset(items_file, model.processor)
    n = min(limit or len(items), len(items))
    golds = [r.data["answers"] for r in items.records[:n]]
    runs = {
        "as trained": (model, items, {}),
        "tiles 0<->2 swapped": (model, items, {"swap": True}),
        "images shuffled": (model, items, {"shuffle_images": True}),
        "cross-attention off": (without_cross_attention(model), items, {}),
        "no tile identity": (without_tile_identity(model), items, {}),
        "one tile": (model, ItemsDataset(items_file, model.processor.with_max_tiles(1)), {}),
    }
    rows = []
    for name, (variant, shown, options) in runs.items():
        if variant is None:
            continue
        predictions = predict(variant.eval(), shown, batch_size, n, **options)
        em = sum(score("exact_match", p, g) for p, g in zip(predictions, golds)) / len(golds)
        rows.append({"control": name, "exact_match": em, "cer": corpus_cer(predictions, golds), "n": len(golds)})
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmllm controls", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a save_pretrained folder (e.g. runs/demo/runs/nvlm_x-seed0/sft/model)")
    parser.add_argument("data", help="an OCR eval folder with items.jsonl (e.g. runs/demo/data/ocr-easy-test)")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    rows = controls(MMLLM.from_pretrained(args.model), args.data, args.batch_size)
    print(markdown_table(["control", "exact match %", "CER", "n"],
                         [[r["control"], f"{100 * r['exact_match']:.1f}", f"{r['cer']:.3f}", r["n"]] for r in rows]))
