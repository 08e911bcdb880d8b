"""`mmllm bench`'s report: the tables it prints, bench.md with its notes on method, bench.json and the plots."""
from __future__ import annotations

from pathlib import Path

from mmllm.jsonl import write_json, write_text_atomic

NOTES = """\
- **Timing.** Train step = forward + backward of the LM loss on a batch of identical one-image
  question/answer samples (median of the timed repeats after one warm-up); generation = greedy decoding
  of exactly `new_tokens` tokens with the KV cache, prefill and image encoding included (tokens/s =
  batch x new tokens / median time). Repeats go round the models in turn, so load changes hit all alike.
  Ratios are time ratios (ours / theirs, X / D, ...), so < 1 means the first is faster.
- **FLOPs and MFU.** The FLOPs of one train step are counted by torch's FlopCounterMode on a real
  forward + backward (matrix products, convolutions, attention; elementwise work is not counted).
  MFU = those FLOPs / median step time / the device's dense bf16 peak (known GPUs, or `--peak_tflops`);
  train tokens/s = batch x decoder tokens / step time.
- **Shared CPUs.** With another job on the cores, OpenMP's spinning worker threads stall: on a shared
  2-core machine a tiny train step took 1.7 s with torch's 2 threads and 8 ms with
  `OMP_WAIT_POLICY=PASSIVE`, so `mmllm bench` sets that unless the variable is already set (settings
  record it; export OMP_WAIT_POLICY=ACTIVE for libgomp's default). Compare numbers of one run only.
- **Packing.** The same 8 mixed-length samples (a fifth text only, the rest 1 to max_tiles tiles, answers
  of 1 to 60 words) in one train step, collated one left-padded row each or packed (`--data.pack_to`) into
  rows as long as the longest sample or of 2048 tokens: padding = pad tokens / all tokens of the batch; real
  tokens/s counts the samples' own. sdpa computes every score of a packed row and masks the other samples'
  (flash-attention's varlen kernel skips them), so long packed rows cost attention that padding does not.
- **Tiles.** `k` tiles come from a 1 x k image; for k > 1 the thumbnail is added (k + 1 tiles encoded).
  D puts every tile's tag and tokens into the decoder, X only the tags (keys/values: all tiles), H the
  thumbnail (keys/values: the regular tiles, each with its tile identity).
- **Peak memory** on CPU is the process RSS high-water mark (VmHWM, reset per model with
  /proc/self/clear_refs): it includes the Python runtime and every model built so far; on CUDA it is
  the allocator's peak for that model's warm-up step and generation.
- **LLaVA next to NVLM-D.** Same Llama config; a CLIP tower with our ViT's width, depth, heads and MLP on
  the same tiles, fed as a batch of images; its square patch is chosen so that each tile gives as many
  tokens as ours gives the LLM after pixel shuffle (LLaVA cannot pool). It then gets our NVLM-D batch
  as it is (same placeholders, tags and text), so both decoders see the same sequence. Its projector is
  Linear-GELU-Linear (d_llm wide) where ours is LayerNorm-Linear-GELU-Linear (d_ffn wide).
- **Mllama next to NVLM-X.** Same Llama layers plus one Mllama cross-attention layer where we insert a
  gated block (its MLP is SwiGLU and its keys/values use the LLM's KV heads; ours are GELU and full
  width). Vision: our ViT's width/depth/heads/MLP with the matching patch, no global encoder layers
  (Llama 3.2 Vision has 8), its gated position/tile embeddings and one intermediate layer concatenated
  (vision_output_dim = 2 x width). It keeps CLS, so it has one key more per tile. Mllama always encodes
  `max_num_tiles` tiles per image, so one model is built per tile count with exactly the tiles we feed
  (ours, thumbnail included): no padding tiles; its tile tables, and so its parameter count, grow with it
  (the models table shows it at the largest tile count; bench.json has it per row).
  Its cross-attention mask is ours at tile level (a token sees its image's tiles, an X tile tag only
  its own tile).
- **Sizes.** tiny = the test suite's tiny model (16x4 patches + 2x2 pixel shuffle on 32-px tiles: 4
  tokens per tile; the peers' 16-px patches give the LLM the same 4 but run their towers on 4 patches
  where ours runs on 16, negligible at this width). 100m = ViT-S (384 wide, 12 blocks) with 32-px
  patches and no pixel shuffle on 224-px tiles (49 tokens per tile, as ViT-S/16 + 2x2 shuffle would give
  the LLM) and a 12-layer, 768-wide Llama: towers and LLMs of ours and the peers run on exactly the same
  token counts.
"""


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def tables(result: dict) -> dict[str, str]:
    """The markdown tables of a result: models, measurements, ratios."""
    from mmllm.eval.report import markdown_table

    models = markdown_table(
        ["size", "model", "params", "tower patches / tile", "LLM image tokens / tile"],
        [[m["size"], m["model"], f"{m['params']:,}", m["tower_tokens_per_tile"], m["llm_tokens_per_tile"]]
         for m in result["models"]])
    rows = markdown_table(
        ["size", "tiles", "model", "decoder tokens", "step ms", "train tokens/s", "step TFLOP", "MFU %",
         "gen tokens/s", "peak MB"],
        [[r["size"], r["tiles"], r["model"], r["decoder_len"], fmt(r["step_s"] * 1000, ".1f"),
          fmt(r["train_tokens_per_s"], ".0f"), fmt(r["step_tflop"], ".4f"), fmt(r["mfu"] and 100 * r["mfu"], ".1f"),
          fmt(r["tokens_per_s"], ".1f"), fmt(r["peak_mb"], ".0f")] for r in result["rows"]])
    ratios = markdown_table(
        ["size", "tiles", "pair", "step time", "generation time", "decoder tokens"],
        [[r["size"], r["tiles"], r["pair"], fmt(r["step_s"], ".2f"), fmt(r["gen_s"], ".2f"),
          fmt(r["decoder_len"], ".2f")] for r in result["ratios"]])
    packing = markdown_table(
        ["size", "model", "batching", "rows x tokens", "padding", "step ms", "real tokens/s"],
        [[r["size"], r["model"], r["batching"], f"{r['rows']} x {r['row_tokens']}", fmt(r["padding_fraction"], ".3f"),
          fmt(r["step_s"] * 1000, ".0f"), fmt(r["real_tokens_per_s"], ".0f")] for r in result.get("packing", [])])
    return {"models": models, "rows": rows, "ratios": ratios, "packing": packing}


def write_report(result: dict, out: Path) -> list[Path]:
    """bench.json, bench.md and, per size, step time and tokens/s vs tiles (PNG)."""
    from mmllm.eval.report import plot_lines

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", result)
    pictures = []
    for size in dict.fromkeys(r["size"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["size"] == size]
        for key, title, unit in (("step_s", "train step time", "s"), ("tokens_per_s", "generation", "tokens/s")):
            series = {m: [(r["tiles"], r[key]) for r in rows if r["model"] == m]
                      for m in dict.fromkeys(r["model"] for r in rows)}
            path = out / f"{key}_vs_tiles-{size}.png"
            plot_lines(series, path, f"{size}: {title} (batch {result['settings']['batch']})",
                       "tiles (+ thumbnail when > 1)", unit)
            pictures.append(path)
    t = tables(result)
    settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items())
    write_text_atomic(out / "bench.md",
        "# mmllm bench: NVLM-D, -X, -H and their Hugging Face peers\n\n"
        f"Settings: {settings}. Total {result['total_s']:.0f} s in one process.\n\n"
        f"## Models\n\n{t['models']}\n\n## Measurements\n\n{t['rows']}\n\n## Ratios (time: first / second)\n\n"
        f"{t['ratios']}\n\n## Packing ({result['settings']['packing_samples']} mixed-length samples)\n\n"
        f"{t['packing']}\n\n"
        + "".join(f"![{p.name}]({p.name})\n\n" for p in pictures) + "## Notes\n\n" + NOTES)
    return [out / "bench.json", out / "bench.md", *pictures]
