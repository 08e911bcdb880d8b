"""`mmllm bench`: the peer benchmark. It measures NVLM-D, -X and -H, and the Hugging Face models closest to D and X
(`LlavaForConditionalGeneration`, `MllamaForConditionalGeneration`) built at matched sizes, as the
tile count grows, all in one process so that the printed ratios compare like with like.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from mmllm.config import ARCHS, EncoderConfig, LLMConfig, MMLLMConfig, ProcessorConfig
from mmllm.model import MMLLM
from mmllm.tokenizer import load_tokenizer

from .bench_report import fmt, tables, write_report
from .peers import PEERS, Tower
from .cost import (decoder_length, mixed_samples, our_inputs, packing_rows, peak_memory_mb, peak_tflops, prompt_batch,
                   reset_peak_memory, step_flops, timed, train_batch, train_step)

# -- mmllm bench ------------------------------------------------------------------------------

# tiny: the test suite's tiny model (tests/conftest.py). Its 16x4 patches + 2x2 pixel shuffle give 4
# tokens per tile, a square count a square-patch peer tower matches exactly; the demo config's 32x4
# patches give 8, which none can. 100m: an 85M-parameter Llama and a ViT-S (384 wide, 12 blocks) with
# 32-px patches and no pixel shuffle on 224-px tiles: 49 tokens per tile in the tower and in the LLM, as
# many as ViT-S/16 + 2x2 shuffle give the LLM. The peers cannot pool, so with ViT-S/16 + shuffle their
# towers would run 4x fewer tokens or their LLMs get 4x more; this way both run exactly what ours run.
# Every tower gives its last block (feature_layer -1): LLaVA's -2 would still run the last block, unused.
SIZES: dict[str, dict] = {
    "tiny": dict(
        encoder=dict(feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [16, 4]}),
        llm=dict(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    ),
    "100m": dict(
        encoder=dict(model="vit_small_patch32_224", image_size=224, feature_layer=-1, options={}),
        llm=dict(options={"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "num_key_value_heads": 12, "max_position_embeddings": 2048}),
        pixel_shuffle=1,
        cross_attention_every=4,  # 3 blocks in 12 layers (NVLM: one every 6-8 layers; Llama 3.2 Vision: every 5)
    ),
    # ~1B for GPUs (scripts/gpu_check.py): ViT-B/32 (88 M) on 224-px tiles, 49 tokens per tile as for 100m,
    # and a Llama of 2048 x 16 layers (0.9 B, Llama-3.2-1B's width and depth with its 8 KV heads).
    "1b": dict(
        encoder=dict(model="vit_base_patch32_224", image_size=224, feature_layer=-1, options={}),
        llm=dict(options={"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                          "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 4096}),
        pixel_shuffle=1,
        cross_attention_every=4,
    ),
}


def default_tiles(size: str, max_tiles: int) -> list[int]:
    """Every count for tiny; 1 and max for the larger sizes, whose steps take seconds each on a CPU."""
    return list(range(1, max_tiles + 1)) if size == "tiny" else sorted({1, max_tiles})


def size_config(size: str, arch: str, max_tiles: int) -> MMLLMConfig:
    """The config of one benchmark size and arch (random init, nothing downloaded)."""
    spec = SIZES[size]
    return MMLLMConfig(
        arch=arch, encoder=EncoderConfig(**spec["encoder"]), llm=LLMConfig(**spec["llm"]),
        processor=ProcessorConfig(max_tiles=max_tiles),
        **{k: v for k, v in spec.items() if k not in ("encoder", "llm")},
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Entry:
    """One model at one tile count: what to time it on."""

    name: str
    model: nn.Module
    train: dict  # forward kwargs (with labels)
    prompt: dict  # generate kwargs
    decoder_len: int
    batch_size: int


def measure(entries: list[Entry], device: torch.device, steps: int, new_tokens: int,
            peak: float | None = None) -> list[dict]:
    """Train-step time, training tokens/s, FLOPs and model FLOPs utilisation (MFU: counted FLOPs per
    second over the device's `peak` TFLOP/s), generation throughput and peak memory of each model.

    One warm-up step and generation per model, under its own peak-memory window; then the timed
    repeats go round the models in turn, so a change in machine load hits them all alike.
    """
    flops = [step_flops(e.model.train(), e.train) for e in entries]
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    train_fns = [train_step(e.model, e.train) for e in entries]
    gen_fns = [partial(e.model.generate, **e.prompt, **gen) for e in entries]
    peaks = []
    for e, step, generate in zip(entries, train_fns, gen_fns):
        reset_peak_memory(device)
        e.model.train()
        step()
        e.model.eval()
        with torch.no_grad():
            generate()
        peaks.append(peak_memory_mb(device))
        e.model.zero_grad(set_to_none=True)
    step_s, gen_s = [[] for _ in entries], [[] for _ in entries]
    for _ in range(steps):
        for e, step, times in zip(entries, train_fns, step_s):
            e.model.train()
            times.append(timed(step, device))
            e.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for _ in range(steps):
            for e, generate, times in zip(entries, gen_fns, gen_s):
                e.model.eval()
                times.append(timed(generate, device))
    rows = []
    for e, memory, fl, st, gt in zip(entries, peaks, flops, step_s, gen_s):
        step = statistics.median(st)
        rows.append({"model": e.name, "decoder_len": e.decoder_len, "params": n_params(e.model), "step_s": step,
                     "train_tokens_per_s": e.batch_size * e.decoder_len / step, "step_tflop": fl / 1e12,
                     "mfu": fl / step / (peak * 1e12) if peak else None, "gen_s": statistics.median(gt),
                     "tokens_per_s": e.batch_size * new_tokens / statistics.median(gt), "peak_mb": memory})
    return rows


def build_entries(models: dict[str, MMLLM], peers: dict[str, nn.Module], n_tiles: int, batch_size: int,
                  device: torch.device) -> list[Entry]:
    """Each of our models, and each built peer (`peers`: by the arch it stands next to) on that arch's inputs."""
    out = []
    for arch, model in models.items():
        train, prompt = train_batch(model, n_tiles, batch_size), prompt_batch(model, n_tiles, batch_size)
        out.append(Entry(arch, model, our_inputs(train, device), our_inputs(prompt, device),
                         decoder_length(model, n_tiles), batch_size))
        if arch in peers:
            convert = PEERS[arch].inputs
            ids = {"pad_token_id": model.tokenizer.pad_token_id, "eos_token_id": model.tokenizer.eos_token_id}
            out.append(Entry(PEERS[arch].name, peers[arch], convert(train, device),
                             {**convert(prompt, device), **ids}, prompt.input_ids.shape[1], batch_size))
    return out


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Each arch over the first (D, the paper's baseline) and ours over each peer, at each size and tile count:
    time and decoder-length ratios."""
    pairs = [(arch, ARCHS[0]) for arch in ARCHS[1:]] + [(arch, peer.name) for arch, peer in PEERS.items()]
    out = []
    for size, tiles in dict.fromkeys((r["size"], r["tiles"]) for r in rows):
        at = {r["model"]: r for r in rows if (r["size"], r["tiles"]) == (size, tiles)}
        for a, b in pairs:
            if a in at and b in at:
                out.append({"size": size, "tiles": tiles, "pair": f"{a}/{b}",
                            **{k: at[a][k] / at[b][k] for k in ("step_s", "gen_s", "decoder_len")}})
    return out


def model_rows(size: str, models: dict[str, MMLLM], peers: dict[str, nn.Module]) -> list[dict]:
    """Parameters and tokens per tile of each model: patches its tower runs on, image tokens its LLM
    gets (in the sequence for D and LLaVA, as cross-attention keys for X, H and Mllama, which keeps CLS)."""
    out = [{"size": size, "model": arch, "params": n_params(m), "tower_tokens_per_tile": Tower.of(m).tokens,
            "llm_tokens_per_tile": m.processor.tokens_per_tile} for arch, m in models.items()]
    for arch, peer in peers.items():
        patches = Tower.of(models[arch]).llm_tokens
        out.append({"size": size, "model": PEERS[arch].name, "params": n_params(peer),
                    "tower_tokens_per_tile": patches, "llm_tokens_per_tile": patches + PEERS[arch].extra_tokens_per_tile})
    return out


def bench(sizes: list[str], archs: list[str], tiles: list[int] | None, max_tiles: int, batch_size: int, steps: int,
          new_tokens: int, device: torch.device, peers: bool, peak: float | None = None) -> dict:
    """Every size x tile count x model, measured in this one process; returns rows, ratios and models.

    `tiles` None: `default_tiles` per size. `peak`: the device's TFLOP/s for MFU (None: known GPUs only).
    """
    peak = peak or peak_tflops(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(None)
    rows, models_info, packing = [], [], []
    for size in sizes:
        models = {}
        for arch in archs:
            torch.manual_seed(0)
            models[arch] = MMLLM(size_config(size, arch, max_tiles), tokenizer=tokenizer).to(device, dtype)
        built = {}
        for k in tiles or default_tiles(size, max_tiles):
            for arch in [a for a in models if peers and a in PEERS]:
                if PEERS[arch].per_tile_count or arch not in built:
                    torch.manual_seed(0)
                    built[arch] = PEERS[arch].build(models[arch], k + (k > 1)).to(device, dtype)
            for row in measure(build_entries(models, built, k, batch_size, device), device, steps, new_tokens, peak):
                rows.append({"size": size, "tiles": k, **row})
                print(f"[bench] {size}, {k} tile(s), {row['model']}: step {row['step_s'] * 1000:.1f} ms, "
                      f"MFU {fmt(row['mfu'] and 100 * row['mfu'], '.1f')} %, {row['tokens_per_s']:.1f} tok/s, "
                      f"decoder {row['decoder_len']} tokens")
        models_info += model_rows(size, models, built)
        for arch, model in models.items():  # the same mixed-length samples, one per row and packed
            samples = mixed_samples(model, PACKING_SAMPLES, max_tiles)
            for row in packing_rows(model, samples, PACK_TO, device, steps):
                packing.append({"size": size, "model": arch, **row})
                print(f"[bench] {size}, {arch}, {row['batching']}: {row['rows']} rows, padding "
                      f"{row['padding_fraction']:.3f}, {row['real_tokens_per_s']:.0f} real tokens/s")
    return {"rows": rows, "ratios": ratio_rows(rows), "models": models_info, "packing": packing}


# The packing measurement: this many samples of mixed lengths (`mixed_samples`), one padded row each or packed
# into rows as long as the longest sample (0) or of 2048 tokens.
PACKING_SAMPLES, PACK_TO = 8, [0, 2048]

def _csv(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def options() -> argparse.ArgumentParser:
    """`mmllm bench`'s options."""
    parser = argparse.ArgumentParser(
        prog="mmllm bench",
        description="Train-step time, generation tokens/s and peak memory of NVLM-D, -X and -H (and of "
        "LLaVA / Mllama built at matched sizes) as the tile count grows; prints tables and ratios. "
        "A benchmark, not a test: numbers depend on the machine and its load.")
    parser.add_argument("--sizes", type=_csv(str), default=["tiny", "100m"],
                        help=f"comma list of {', '.join(SIZES)} (default tiny,100m)")
    parser.add_argument("--archs", type=_csv(str), default=list(ARCHS),
                        help="comma list of nvlm_d, nvlm_x, nvlm_h (default all)")
    parser.add_argument("--max_tiles", type=_positive, default=6,
                        help="the processor's max tiles (default 6, as in NVLM)")
    parser.add_argument("--tiles", type=_csv(int), default=None,
                        help="tile counts to measure, a thumbnail added when > 1 (default: 1..max_tiles for tiny, "
                        "1 and max_tiles for 100m)")
    parser.add_argument("--batch", type=_positive, default=1,
                        help="samples per batch, train step and generation (default 1)")
    parser.add_argument("--steps", type=_positive, default=2,
                        help="timed repeats per model after one warm-up (default 2)")
    parser.add_argument("--new_tokens", type=_positive, default=8, help="tokens generated per sample (default 8)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu (default, float32) or cuda: every model in bf16 weights, no fp32 master copy")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: known GPUs' dense bf16 peak; none on CPU)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure LLaVA (next to D) and Mllama (next to X)")
    parser.add_argument("--out", default="runs/bench",
                        help="folder for bench.json, bench.md and plots (default runs/bench)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked against each other and the machine."""
    parser = options()
    args = parser.parse_args(argv)
    for name, values, valid in (("size", args.sizes, SIZES), ("arch", args.archs, ARCHS)):
        bad = [v for v in values if v not in valid]
        if bad or not values:
            parser.error(f"unknown {name} {bad or values}; valid: {', '.join(valid)}")
    tiles = sorted(set(args.tiles)) if args.tiles else None
    if tiles and not all(1 <= k <= args.max_tiles for k in tiles):
        parser.error(f"--tiles {tiles} must lie in 1..--max_tiles {args.max_tiles}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.tiles = tiles
    return args


def main(argv: list[str] | None = None) -> dict:
    """`mmllm bench`: parse the options, measure, print the tables and write the report; returns bench.json."""
    args = parse_args(argv)
    tiles, device = args.tiles, torch.device(args.device)
    start = time.perf_counter()
    result = bench(args.sizes, args.archs, tiles, args.max_tiles, args.batch, args.steps, args.new_tokens, device,
                   args.peers, args.peak_tflops)
    result = {"settings": {"device": args.device, "dtype": "bfloat16" if device.type == "cuda" else "float32",
                           "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
                           "new_tokens": args.new_tokens, "max_tiles": args.max_tiles, "tiles": tiles or "default",
                           "packing_samples": PACKING_SAMPLES,
                           "peak_tflops": args.peak_tflops or peak_tflops(device),
                           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset")},
              "total_s": time.perf_counter() - start, **result}
    files = write_report(result, Path(args.out))
    t = tables(result)
    print(f"\n{t['models']}\n\n{t['rows']}\n\nRatios (time: first / second; < 1: first is faster)\n\n{t['ratios']}"
          f"\n\nPacking ({PACKING_SAMPLES} mixed-length samples, one train step)\n\n{t['packing']}")
    print(f"\n[bench] {result['total_s']:.0f} s; wrote {', '.join(str(f) for f in files)}")
    return result
