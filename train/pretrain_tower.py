"""A tiny vision tower pretrained by the project itself, so that stage 1 (connector only) has a tower worth freezing.

The objective is task-agnostic, as the paper's towers are: SigLIP's pairwise sigmoid image-text contrast (a learned
temperature and bias) on synthetic renders with their captions: tiles of rendered text lines (their caption is the
text they show), chart tiles ("bar chart A 12 B 5") and simple scenes of shapes ("red circle left of blue square").
No downstream question or answer is a training label. Pair i of a split comes from its own RNG seeded by
(split, seed, i) in a stream of its own, so no synthetic dataset's image is reproduced. Images are the tiles the
processor would cut (`tile_image`), thumbnails included: the tower trains on what it will see.

The tower is saved as its whole timm state dict (`model.safetensors`): `EncoderConfig(pretrained=that file)` loads
it through timm's pretrained path. The contrastive heads (image pooling, text encoder) are not part of it.
"""
from __future__ import annotations

import json
import math
import random
import string
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import Tensor, nn

from mmllm import tiling
from mmllm.config import ConfigError, EncoderConfig, ProcessorConfig
from mmllm.encoders import VisionEncoder, build_encoder
from mmllm.encoders.timm_encoder import create_timm_model
from mmllm.jsonl import write_json
from mmllm.progress import progress

from . import synth
from .cache import build_once, parse_request
from .schedule import warmup_cosine_to_zero

WEIGHTS, ENCODER_FILE, REPORT_FILE = "model.safetensors", "encoder.json", "pretrain.json"
KINDS = {"line": 0.7, "chart": 0.1, "scene": 0.2}  # share of the pairs: mostly text, which the tiny models read
MAX_TILES = ProcessorConfig().max_tiles  # the tiling the processor applies, so tiles look as they will in use
CANVAS = 32  # side of the renders that are one tile already (glyph tiles, scenes); resized for another tile size
GLYPHS = string.ascii_letters + string.digits
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (140, 60, 180), "orange": (240, 130, 30)}


@dataclass
class TowerRecipe:
    """Everything that decides the pretrained tower (the cache key hashes it).

    Attributes:
        seed: seeds the pairs, the initial weights and the batch order.
        steps: optimiser steps; the default recipe builds in ~190 s on two shared CPU cores (measured: held-out
            retrieval 58 % against 1.7 % chance, the fonts probe 68 % against 30 % for the random tower).
        batch_size: pairs per step; SigLIP's loss takes every other caption of the batch as a negative.
        chart_renders: charts rendered per split, each tiled once and its tiles shared by the chart pairs that
            draw it: a chart takes ~30 ms to render, too slow to draw one per chart pair on a CPU. Every other pair is
            drawn fresh (~0.3 ms), so none is seen twice.
        lr: AdamW's peak learning rate, reached after `warmup_steps` and decayed to 0 on a cosine.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW weight decay.
        embed_dim: width of the shared image-text embedding.
        text_width: width of the caption encoder (`CaptionEncoder`).
        max_caption: caption bytes kept (the longest caption is ~40).
        encoder: the tower; the default is configs/nvlm_d_tiny.yaml's.
        heldout: held-out pairs scored by image-to-text retrieval.
        candidates: captions each held-out image is ranked against (itself and `candidates - 1` others).
        probe_train: glyph tiles the linear probe is fitted on.
        probe_test: glyph tiles it is scored on.
    """

    seed: int = 0
    steps: int = 1500
    batch_size: int = 256
    chart_renders: int = 512
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    embed_dim: int = 128
    text_width: int = 64
    max_caption: int = 48
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(
        feature_layer=-1, options={"embed_dim": 128, "depth": 2, "num_heads": 2, "patch_size": [32, 16]}))
    heldout: int = 512
    candidates: int = 64
    probe_train: int = 2000
    probe_test: int = 1000

    def __post_init__(self) -> None:
        if not 1 < self.candidates <= self.heldout:
            raise ConfigError(f"candidates must be in 2..heldout ({self.heldout}), got {self.candidates}")


@dataclass(frozen=True)
class Pair:
    """One image (a tile) and its caption."""

    image: Image.Image
    caption: str
    kind: str


@dataclass(frozen=True)
class Probe:
    """Linear-probe accuracy of glyph identity (left and right cell, averaged) on frozen tower features."""

    pretrained: float
    random_init: float


@dataclass
class Report:
    """What `pretrain.json` holds.

    Attributes:
        recipe: the recipe the tower was made from.
        first_loss: mean loss of the first 5 % of steps.
        last_loss: mean loss of the last 5 % of steps.
        retrieval_top1: held-out image-to-text top-1 accuracy among `recipe.candidates` captions (a caption equal
            to the image's own counts as a hit).
        retrieval_chance: the same for a random ranking.
        probes: the glyph probe (`glyph_probe`) per tile style: `easy` (tiles of easy-OCR lines, synth's exact
            layout), `fonts` (its cells in random DejaVu faces and sizes, a pixel or two off, black on white) and
            `colours` (as fonts, in random readable colours).
        wall_s: seconds from the first render to the saved report.
    """

    recipe: TowerRecipe
    first_loss: float
    last_loss: float
    retrieval_top1: float
    retrieval_chance: float
    probes: dict[str, Probe]
    wall_s: float

    @classmethod
    def load(cls, folder: Path) -> Report:
        data = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        recipe = data.pop("recipe")
        return cls(recipe=TowerRecipe(**{**recipe, "encoder": EncoderConfig(**recipe["encoder"])}),
                   probes={style: Probe(**probe) for style, probe in data.pop("probes").items()}, **data)


# ---------------------------------------------------------------------------------------------------- pairs


def make_pair(recipe: TowerRecipe, i: int, split: str = "train") -> Pair:
    """Pair i of `split` for `recipe` (its seed, tile size and chart renders), from its own RNG."""
    rng = random.Random(f"tower/{split}/{recipe.seed}/{i}")
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    size = tile_side(recipe.encoder)
    if kind == "chart":
        tiles = _chart_tiles(split, recipe.seed, rng.randrange(recipe.chart_renders), size)
        image, caption = rng.choice(tiles)
    else:
        image, caption = RENDERERS[kind](rng, size)
    return Pair(image, caption, kind)


def _line(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """A third each: a tile or the thumbnail of an easy-OCR line (synth's own layout); two glyphs in the easy
    layout's cells (one cell may be blank) in varied faces, sizes and colours; a few glyphs anywhere."""
    style = rng.random()
    if style < 1 / 3:
        line, text, _, _ = synth.ocr_easy(rng)
        tiles, (cols, _) = tiling.tile_image(line, size, MAX_TILES)
        per_tile = synth.OCR_EASY_SIZE[0] // synth.OCR_EASY_CELL // cols
        shown = math.ceil(len(text) / per_tile)  # tiles past the text are blank, with nothing to caption
        k = rng.randrange(shown + 1)
        return (tiles[-1], text) if k == shown else (tiles[k], text[k * per_tile:(k + 1) * per_tile])
    if style < 2 / 3:
        chars = [rng.choice(GLYPHS), rng.choice(GLYPHS)]
        if rng.random() < 0.2:
            chars[rng.randrange(2)] = " "
        return _fit(_cells(rng, "".join(chars), TRAIN_CELLS), size), "".join(chars)
    return _free_text(rng, size)


@dataclass(frozen=True)
class CellStyle:
    """How `_cells` varies from the easy layout: the chance of each of its settings (the mono face, its 20 px size,
    black on white) being kept; otherwise a random DejaVu face, a random size, random readable colours."""

    face: float
    size: float
    black_on_white: float


# Half the time each: the easy settings give the contrast a way in. On cells in varied settings alone its loss stayed
# at the trivial solution for 400 steps (on easy-layout tiles alone: 97 % held-out retrieval); mixing the settings
# raised the fonts probe after 600 steps from 40 to 47 % (the default 1500 steps: 68 %).
TRAIN_CELLS = CellStyle(0.5, 0.5, 0.5)
PROBE_CELLS = {"fonts": CellStyle(0.0, 0.0, 1.0), "colours": CellStyle(0.0, 0.0, 0.0)}


def _cells(rng: random.Random, chars: str, style: CellStyle) -> Image.Image:
    """`chars` centred in the easy layout's 16 px cells, each a pixel or two off, in `style`."""
    face = synth.OCR_EASY_FONT if rng.random() < style.face else rng.choice(synth.OCR_HARD_FONTS)
    font = synth.load_font(face, synth.OCR_EASY_FONT_SIZE if rng.random() < style.size else rng.randint(14, 22))
    background, colour = ("white", "black") if rng.random() < style.black_on_white else synth.contrasting_colours(rng)
    image = Image.new("RGB", (CANVAS, CANVAS), background)
    draw = ImageDraw.Draw(image)
    for k, char in enumerate(chars):
        x = synth.OCR_EASY_CELL * k + synth.OCR_EASY_CELL // 2 + rng.randint(-2, 2)
        draw.text((x, CANVAS // 2 + rng.randint(-2, 2)), char, fill=colour, font=font, anchor="mm")
    return image


def _free_text(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One to three glyphs anywhere on the tile, in a random face, size and colours."""
    font = synth.load_font(rng.choice(synth.OCR_HARD_FONTS), rng.randint(10, 24))
    text = "".join(rng.choices(GLYPHS, k=rng.randint(1, 3)))
    while len(text) > 1 and font.getlength(text) > CANVAS - 2:
        text = text[:-1]
    left, top, right, bottom = font.getbbox(text, anchor="lt")
    background, colour = synth.contrasting_colours(rng)
    image = Image.new("RGB", (CANVAS, CANVAS), background)
    x = rng.randint(1, max(1, CANVAS - 1 - right)) - left
    y = rng.randint(1, max(1, CANVAS - 1 - bottom)) - top
    ImageDraw.Draw(image).text((x, y), text, fill=colour, font=font, anchor="lt")
    return _fit(image, size), text


@lru_cache(maxsize=4096)
def _chart_tiles(split: str, seed: int, j: int, size: int) -> tuple[tuple[Image.Image, str], ...]:
    """Chart j's tiles with their captions, from an RNG of its own. Mostly an easy bar chart: its tiles and
    thumbnail, each captioned with the labels and values of the bars it shows; else a hard chart (bar, line or pie):
    its thumbnail, captioned with its kind and labels."""
    rng = random.Random(f"tower-chart/{split}/{seed}/{j}")
    if rng.random() < 0.2:
        kind = rng.choice(synth.CHART_KINDS["hard"])
        labels, values = synth.chart_data(rng, "hard", kind)
        chart = synth.figure_image(synth.CHART_SIZE["hard"], lambda fig: synth.hard_chart(fig, rng, kind, labels, values))
        return ((tiling.tile_image(chart, size, MAX_TILES)[0][-1], " ".join([f"{kind} chart", *labels])),)
    labels, values = synth.chart_data(rng, "easy", "bar")
    centres: list[float] = []  # each bar's centre as a fraction of the chart's width

    def draw(fig: Figure) -> None:
        synth.easy_bar(fig, labels, values)
        ax = fig.axes[0]
        ax.get_xlim()  # settles the autoscaled limits the transform reads
        centres.extend(ax.transData.transform([(x, 0) for x in range(len(values))])[:, 0] / fig.bbox.width)

    tiles, (cols, rows) = tiling.tile_image(synth.figure_image(synth.CHART_SIZE["easy"], draw), size, MAX_TILES)
    bars = range(len(values))
    shown = [[b for b in bars if int(centres[b] * cols) == k % cols] for k in range(cols * rows)] + [list(bars)]
    return tuple((tile, " ".join(["bar chart", *(f"{labels[b]} {values[b]}" for b in bs)])) for tile, bs in zip(tiles, shown))


def _scene(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One coloured shape, or two side by side or one above the other, on a grey background."""
    grey = rng.randint(0, 255)
    image = Image.new("RGB", (CANVAS, CANVAS), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    objects = rng.sample([(c, s) for c in COLOURS for s in SHAPES], rng.choice((1, 2)))
    across = rng.random() < 0.5
    half = CANVAS // 2
    for n, (colour, shape) in enumerate(objects):
        side = rng.randint(8, 14)
        lo, hi = (1, CANVAS - side - 1) if len(objects) == 1 else ((1, half - side) if n == 0 else (half, CANVAS - side - 1))
        along, other = rng.randint(lo, hi), rng.randint(1, CANVAS - side - 1)
        x, y = (along, other) if across else (other, along)
        fill = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in COLOURS[colour])
        box = (x, y, x + side - 1, y + side - 1)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill)
    names = [f"{colour} {shape}" for colour, shape in objects]
    if len(names) == 1:
        caption = names[0]
    elif rng.random() < 0.5:  # the same scene said from either side
        caption = f"{names[0]} {'left of' if across else 'above'} {names[1]}"
    else:
        caption = f"{names[1]} {'right of' if across else 'below'} {names[0]}"
    return _fit(image, size), caption


def _fit(image: Image.Image, size: int) -> Image.Image:
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


RENDERERS = {"line": _line, "scene": _scene}  # charts come from `_chart_tiles`


def pair_tensors(pairs: list[Pair], max_caption: int) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, 3, H, W] and captions as bytes + 1 padded with 0 to [N, max_caption]."""
    images = torch.from_numpy(np.stack([np.asarray(p.image) for p in pairs])).permute(0, 3, 1, 2).contiguous()
    captions = torch.zeros(len(pairs), max_caption, dtype=torch.long)
    for n, pair in enumerate(pairs):
        data = pair.caption.encode()[:max_caption]
        captions[n, : len(data)] = torch.tensor(list(data)) + 1
    return images, captions


# --------------------------------------------------------------------------------------------------- model


class CaptionEncoder(nn.Module):
    """A caption's bytes -> one embedding: an embedding per (position, byte), averaged over the caption, then an
    MLP. Unlike a mean of byte embeddings it sees the order ("ab" is not "ba"). Measured against one pre-norm
    transformer layer over byte + position embeddings (600 steps of 256 on an earlier mix of pairs): about the same
    held-out retrieval (scenes 73 vs 81 %, charts 71 vs 69 %, glyph tiles 29 vs 29 %) in 79 s of training, not 139 s."""

    def __init__(self, recipe: TowerRecipe) -> None:
        super().__init__()
        width = recipe.text_width
        self.table = nn.Embedding(recipe.max_caption * 257, width)  # position p, byte b: row 257 p + b + 1
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, recipe.embed_dim))

    def forward(self, ids: Tensor) -> Tensor:
        keep = (ids != 0).unsqueeze(-1).to(self.table.weight.dtype)
        rows = self.table(ids + 257 * torch.arange(ids.shape[1]))
        return self.mlp((rows * keep).sum(1) / keep.sum(1).clamp(min=1))


class Contrast(nn.Module):
    """What the contrast trains beside the tower and throws away: the image head (the tower's patch tokens, normed
    and averaged, projected), the caption encoder, and SigLIP's temperature and bias (initialised as in SigLIP)."""

    def __init__(self, dim: int, recipe: TowerRecipe) -> None:
        super().__init__()
        self.image_norm = nn.LayerNorm(dim)
        self.image_proj = nn.Linear(dim, recipe.embed_dim)
        self.captions = CaptionEncoder(recipe)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def image(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.image_proj(self.image_norm(tokens).mean(1)), dim=-1)

    def text(self, ids: Tensor) -> Tensor:
        return F.normalize(self.captions(ids), dim=-1)

    def loss(self, images: Tensor, texts: Tensor, same: Tensor) -> Tensor:
        """SigLIP's pairwise sigmoid loss; pairs with equal captions count as matches."""
        logits = images @ texts.T * self.log_scale.exp() + self.bias
        return -F.logsigmoid(torch.where(same, logits, -logits)).sum() / len(images)


def same_captions(ids: Tensor) -> Tensor:
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def normalise(images: Tensor, tower: VisionEncoder) -> Tensor:
    """uint8 tiles as the processor hands them to the tower: in [0, 1], normalised with the tower's mean and std."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (tower.mean, tower.std))
    return (images.float() / 255 - mean) / std


@dataclass
class Trained:
    """A tower fresh from `train_tower`, its contrast heads and the loss of every step."""

    tower: VisionEncoder
    contrast: Contrast
    losses: list[float]


def train_tower(recipe: TowerRecipe) -> Trained:
    """The contrastive pretraining itself: plain torch, one process, deterministic for a recipe and thread count."""
    torch.manual_seed(recipe.seed)
    tower = build_encoder(recipe.encoder)
    contrast = Contrast(tower.dim, recipe)
    parameters = [*tower.parameters(), *contrast.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: warmup_cosine_to_zero(step, recipe.steps, recipe.warmup_steps))
    losses = []
    tower.train()
    for step in progress(range(recipe.steps), "pretrain tower", "step"):
        first = step * recipe.batch_size
        images, ids = pair_tensors([make_pair(recipe, i) for i in range(first, first + recipe.batch_size)],
                                   recipe.max_caption)
        loss = contrast.loss(contrast.image(tower(normalise(images, tower))), contrast.text(ids),
                             same_captions(ids))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return Trained(tower.eval(), contrast.eval(), losses)


def tile_side(cfg: EncoderConfig) -> int:
    """The square tile the pairs are rendered at (the processor's tiles are square)."""
    if not isinstance(cfg.image_size, int):
        raise ConfigError(f"a tower is pretrained on square tiles; encoder.image_size is {cfg.image_size!r}")
    return cfg.image_size


# ------------------------------------------------------------------------------------------------ measures


@torch.no_grad()
def retrieval(tower: VisionEncoder, contrast: Contrast, recipe: TowerRecipe) -> tuple[float, float]:
    """(top-1, chance) of held-out image-to-text retrieval, each image against the captions of its group of
    `recipe.candidates` held-out pairs; an equal caption counts as the right one for both."""
    pairs = [make_pair(recipe, i, split="heldout") for i in range(recipe.heldout)]
    images, captions = pair_tensors(pairs, recipe.max_caption)
    hits = chance = 0.0
    for start in range(0, recipe.heldout - recipe.candidates + 1, recipe.candidates):
        group = slice(start, start + recipe.candidates)
        scores = contrast.image(tower(normalise(images[group], tower))) @ contrast.text(captions[group]).T
        same = same_captions(captions[group])
        hits += same[torch.arange(len(same)), scores.argmax(1)].sum().item()
        chance += (same.sum(1).float() / len(same)).sum().item()
    scored = recipe.heldout // recipe.candidates * recipe.candidates
    return hits / scored, chance / scored


PROBES = ("easy", *PROBE_CELLS)


def glyph_tiles(seed: int, n: int, style: str, size: int) -> tuple[Tensor, Tensor]:
    """n tiles of two glyphs of easy OCR's alphabet in its 16 px cells, and the glyphs' indices [n, 2], from a
    stream of their own: the first tile of an easy-OCR line (`easy`), else the cells in `PROBE_CELLS[style]`."""
    tiles, glyphs = [], []
    for i in range(n):
        rng = random.Random(f"tower-probe/{style}/{seed}/{i}")
        if style == "easy":
            line, text, _, _ = synth.ocr_easy(rng)
            tile = tiling.tile_image(line, size, MAX_TILES)[0][0]
        else:
            text = "".join(rng.choices(synth.OCR_EASY_CHARS, k=2))
            tile = _fit(_cells(rng, text, PROBE_CELLS[style]), size)
        tiles.append(Pair(tile, text[:2], "line"))
        glyphs.append([synth.OCR_EASY_CHARS.index(c) for c in text[:2]])
    return pair_tensors(tiles, 2)[0], torch.tensor(glyphs)


@torch.no_grad()
def glyph_probe(tower: VisionEncoder, recipe: TowerRecipe, style: str) -> float:
    """Test accuracy of a linear probe (ridge regression onto one-hot glyphs) naming the glyph in each cell of a
    tile from that cell's patch token, layer-normed as the connectors' first layer does, averaged over the two
    cells: what a frozen tower hands a connector to read. A tower with other than two tokens is probed on all."""
    images, glyphs = glyph_tiles(recipe.seed, recipe.probe_train + recipe.probe_test, style, tile_side(recipe.encoder))
    tokens = F.layer_norm(tower(normalise(images, tower)), (tower.dim,)).double()
    train = slice(0, recipe.probe_train)
    accuracy = 0.0
    for cell in range(2):
        features = tokens[:, cell] if tokens.shape[1] == 2 else tokens.flatten(1)
        x = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
        targets = F.one_hot(glyphs[train, cell], len(synth.OCR_EASY_CHARS)).double()
        weights = torch.linalg.solve(x[train].T @ x[train] + torch.eye(x.shape[1], dtype=torch.float64),
                                     x[train].T @ targets)
        accuracy += ((x[recipe.probe_train:] @ weights).argmax(1) == glyphs[recipe.probe_train:, cell]).float().mean().item()
    return accuracy / 2


def random_tower(recipe: TowerRecipe) -> VisionEncoder:
    """The tower as pretraining starts it: the baseline of the probe."""
    torch.manual_seed(recipe.seed)
    return build_encoder(recipe.encoder).eval()


# ----------------------------------------------------------------------------------------------- the part


def save_tower(tower: VisionEncoder, cfg: EncoderConfig, out: Path) -> None:
    """`out/model.safetensors`: the tower's weights under the whole timm model's keys (what timm's loader expects;
    the final norm and any blocks after `feature_layer`, which the tower cut, keep their initial values and are cut
    again when loaded), and `out/encoder.json`: the EncoderConfig to load it with (`encoder_config`)."""
    whole = create_timm_model(replace(cfg, pretrained=False))
    unexpected = whole.load_state_dict(tower.model.state_dict(), strict=False).unexpected_keys
    if unexpected:  # the missing keys are what the tower cut
        raise RuntimeError(f"the tower's weights are not all named as timm's whole {cfg.model} names them: {unexpected}")
    save_file({k: v.contiguous() for k, v in whole.state_dict().items()}, out / WEIGHTS)
    saved = replace(cfg, pretrained=WEIGHTS, mean=list(tower.mean), std=list(tower.std))
    write_json(out / ENCODER_FILE, asdict(saved))


def encoder_config(folder: Path) -> EncoderConfig:
    """The EncoderConfig of the tower saved in `folder`, its weights file resolved against the folder (which the
    cache renames into place after the build)."""
    cfg = EncoderConfig(**json.loads((folder / ENCODER_FILE).read_text(encoding="utf-8")))
    return replace(cfg, pretrained=str(folder / cfg.pretrained))


def pretrain_tower(recipe: TowerRecipe, out: Path) -> Report:
    """Trains the tower, saves it (`save_tower`) and `out/pretrain.json`; the retrieval and probe numbers are
    measured on the tower loaded back from the saved file, the one that is handed on."""
    start = time.perf_counter()
    trained = train_tower(recipe)
    out.mkdir(parents=True, exist_ok=True)
    save_tower(trained.tower, recipe.encoder, out)
    tower = build_encoder(encoder_config(out)).eval()
    top1, chance = retrieval(tower, trained.contrast, recipe)
    baseline = random_tower(recipe)
    probes = {style: Probe(glyph_probe(tower, recipe, style), glyph_probe(baseline, recipe, style)) for style in PROBES}
    k = max(1, recipe.steps // 20)
    report = Report(recipe, sum(trained.losses[:k]) / k, sum(trained.losses[-k:]) / k, top1, chance, probes,
                    time.perf_counter() - start)
    write_json(out / REPORT_FILE, asdict(report))
    return report


SOURCES = [__file__, synth.__file__, tiling.__file__]  # the code that decides what the tower becomes


def pretrained_tower(recipe: TowerRecipe = TowerRecipe(), root: str | Path | None = None) -> Path:
    """The folder of the tower `recipe` makes (model.safetensors, encoder.json, pretrain.json), built on first use
    and found again after (`build_once`); `encoder_config(folder)` is how a model takes it."""
    return build_once("tower", recipe, lambda folder: pretrain_tower(recipe, folder), SOURCES, root=root)


def main(argv: list[str] | None = None) -> Report:
    """`mmllm pretrain tower`: build (or find) the tower and say how good it is."""
    request = parse_request("mmllm pretrain tower", "Pretrain the tiny vision tower contrastively on synthetic "
                            "renders, once per recipe.", TowerRecipe, argv)
    if request.out is not None:
        folder, report = request.out, pretrain_tower(request.recipe, request.out)
    else:
        folder = pretrained_tower(request.recipe, root=request.root)
        report = Report.load(folder)
    print(f"tower: {folder}")
    print(f"held-out retrieval top-1 {report.retrieval_top1:.1%} among {report.recipe.candidates} captions "
          f"(chance {report.retrieval_chance:.1%}); loss {report.first_loss:.3f} -> {report.last_loss:.3f}")
    for style, probe in report.probes.items():
        print(f"glyph probe ({style} tiles): pretrained {probe.pretrained:.1%}, random init {probe.random_init:.1%}")
    print(f"built in {report.wall_s:.0f} s")
    return report
