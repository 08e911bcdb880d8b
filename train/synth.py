"""Deterministic synthetic datasets: OCR (rendered text), chart QA (matplotlib charts) and ASR (tone words).

Sample i is drawn from its own RNG seeded by (task, level, seed, i), so rerunning writes byte-identical
files and a dataset of n samples is a prefix of a larger one with the same seed. Charts are rendered
with Agg under matplotlib's default style (a user's matplotlibrc cannot change them) and every image
is saved by Pillow without metadata; clips are 16-bit PCM WAV written by soundfile.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import random
import shutil
import string
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.style
import numpy as np
import soundfile as sf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from mmllm.jsonl import write_json, write_jsonl
from mmllm.progress import progress

# The ladder of each task, easiest first: where a tiny model lands between floor and ceiling is what lets a
# comparison tell architectures apart (docs/paper.md, the miniature protocol).
TASK_LEVELS = {"ocr": ("easy", "medium", "hard", "dense"), "chart": ("easy", "medium", "hard"), "asr": ("easy", "hard")}
LEVELS = tuple(dict.fromkeys(level for levels in TASK_LEVELS.values() for level in levels))
VOICES = ("tones", "espeak")
STAMP = "synth.json"  # what a finished dataset folder was made from (synthesize_once)
SYNTH_NAMES = ("train.jsonl", "items.jsonl", STAMP, "images", "audio")  # all that `synthesize` writes in a folder
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

OCR_QUESTION = "What text is in the image?"
# The training prompt equals the eval task's template (lmms-eval's for ChartQA), so `mmllm eval`
# asks the model exactly what it was trained on.
PROMPT_TEMPLATES = {"ocr": "{question}", "chart": "{question}\nAnswer the question with a single word.",
                    "asr": "{question}"}
# Easy OCR is one fixed layout so a tiny model learns it in minutes: 20 px mono glyphs centred in
# 16 px cells, 8 cells per 128 px line, so with 32 px tiles every tile holds two whole glyphs and no
# glyph straddles a tile border (the encoder sees each tile alone).
OCR_EASY_FONT, OCR_EASY_FONT_SIZE, OCR_EASY_SIZE, OCR_EASY_CELL = "DejaVuSansMono.ttf", 20, (128, 32), 16
OCR_EASY_CHARS = string.ascii_lowercase + string.digits
# Medium OCR keeps easy's cells (so its tiles hold two glyphs each), black on white, and varies what easy fixes:
# the mono face, its size, and where in its cell each glyph sits. (With random colours as well, and sizes 16-22,
# jitter 2/4 px, the demo's D and X read 0-1 % after both stages: the tiny frozen tower tells glyphs apart in
# other faces, 68 % in a linear probe, but hardly in other colours, 18 %.)
OCR_MEDIUM_FONTS = tuple(f"DejaVuSansMono{style}.ttf" for style in ("", "-Bold", "-Oblique", "-BoldOblique"))
OCR_MEDIUM_FONT_SIZE = (18, 22)
OCR_MEDIUM_JITTER = (1, 2)  # px a glyph's centre may move from its cell's, across and up or down
# Dense OCR is the high-resolution level: two lines of six easy glyphs, a 96x64 page that tiles as 3x2 tiles of
# 32 px (two glyphs each) + the thumbnail, where the whole page shrinks to 32x32 and a glyph to ~5x10 px: legible
# in the full tiles, not in the thumbnail alone. Its answer is the two lines, a space between.
OCR_DENSE_LINES, OCR_DENSE_CELLS, OCR_DENSE_ROW = 2, 6, 32
# Every DejaVu face with full Latin coverage (the Display faces lack most glyphs).
OCR_HARD_FONTS = tuple(
    f"DejaVu{family}{style}.ttf"
    for family, styles in (
        ("Sans", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("SansMono", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("Serif", ("", "-Bold", "-Italic", "-BoldItalic")),
    )
    for style in styles
)
OCR_HARD_HEIGHT = (32, 64)
OCR_HARD_FONT_SIZE = (14, 30)  # 30 px DejaVu is ~35 px from ascender to descender: fits 64 px with padding
OCR_HARD_MAX_TILT = 5.0  # degrees
MIN_CONTRAST = 4.5  # WCAG AA ratio for text colour against background

CHART_DPI = 100
# Easy charts are 2:1 so they tile as 2 tiles + thumbnail: short sequences, like the OCR lines they
# are trained with (a 3:2 chart would take 6 tiles and pad every mixed batch to its length).
# Medium charts are easy's charts asked harder questions: the smallest bar, and a bar's printed value.
CHART_SIZE = {"easy": (128, 64), "medium": (128, 64), "hard": (256, 192)}
CHART_KINDS = {"easy": ("bar",), "medium": ("bar",), "hard": ("bar", "line", "pie")}
# Hard has 5 question types and 3 chart kinds (coprime), so every 15 consecutive samples hold each pair once.
QUESTION_TYPES = {"easy": ("count", "largest"), "medium": ("count", "largest", "smallest", "value"),
                  "hard": ("value", "largest", "smallest", "difference", "count")}
COUNT_NOUN = {"bar": "bars", "line": "points", "pie": "slices"}
LETTERS = "ABCDEFGH"
WORDS = ("cat", "dog", "sun", "map", "tea", "box", "key", "oak", "fox", "ice", "jam", "owl")
TITLES = ("Sales", "Votes", "Scores", "Stock", "Visits", "Budget")
PALETTES = ("tab10", "Set2", "Dark2", "Paired")

ASR_QUESTION = "Transcribe the audio."
ASR_RATE = 16_000
ASR_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Each word is a DTMF-like pair of tones, one from each group; the groups are spread wider than
# telephone DTMF so the pairs sit several mel bins apart even at 80 bins.
ASR_LOW_HZ, ASR_HIGH_HZ = (300, 450, 650, 900), (1300, 1900, 2800)
ASR_LEVEL = {  # words per clip, seconds per word, seconds between words, noise std
    "easy": {"words": (3, 5), "word_s": (0.20, 0.30), "gap_s": (0.06, 0.12), "noise": 0.003},
    "hard": {"words": (4, 8), "word_s": (0.12, 0.25), "gap_s": (0.03, 0.10), "noise": 0.02},
}


@dataclass(frozen=True)
class Sample:
    image: Image.Image | None
    question: str
    answer: str
    extra: dict[str, Any]  # further items.jsonl fields: question type, chart kind, what was drawn
    audio: np.ndarray | None = None  # 16 kHz mono float waveform


def synthesize(task: str, out: str | Path, n: int, seed: int = 0, level: str = "easy", voice: str = "tones",
               overwrite: bool = False) -> dict:
    """Write `n` samples to `out`: images/<id>.png and/or audio/<id>.wav, train.jsonl (LLaVA
    conversations) and items.jsonl (eval format), and return a summary with counts per question
    type and chart kind. `voice` (ASR only): `tones` (offline, the default) or `espeak`, which speaks
    the same transcripts with espeak-ng.

    A non-empty `out` is refused unless `overwrite`; then it must hold a synthetic set only (`SYNTH_NAMES`),
    and what the new set does not rewrite is removed once it is written, so no stale sample is left beside it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if level not in TASK_LEVELS[task]:
        raise ValueError(f"unknown {task} level {level!r}; valid levels: {', '.join(TASK_LEVELS[task])}")
    if voice not in VOICES or (voice != "tones" and task != "asr"):
        raise ValueError(f"voice {voice!r}: valid voices are {', '.join(VOICES)}, and only the asr task has a voice")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)  # the folder is unfinished until the new stamp is written
    train, items, counts = [], [], {}
    for i in progress(range(n), f"synth {task}", "sample"):
        sample = TASKS[task](random.Random(f"{task}/{level}/{seed}/{i}"), level, i)
        if voice == "espeak":
            sample = replace(sample, audio=_espeak(sample.answer))
        sid = f"{task}-{i:06d}"
        media = {}
        if sample.image is not None:
            media["image"] = f"images/{sid}.png"
            (out / "images").mkdir(exist_ok=True)
            sample.image.save(out / media["image"], format="PNG")
        if sample.audio is not None:
            media["audio"] = f"audio/{sid}.wav"
            (out / "audio").mkdir(exist_ok=True)
            sf.write(out / media["audio"], sample.audio, ASR_RATE, subtype="PCM_16", format="WAV")
        markers = "".join(f"<{kind}>\n" for kind in media)
        train.append({"id": sid, **media, "conversations": [
            {"from": "human", "value": markers + PROMPT_TEMPLATES[task].format(question=sample.question)},
            {"from": "gpt", "value": sample.answer},
        ]})
        items.append({"id": sid, **media, "question": sample.question, "answers": [sample.answer], **sample.extra})
        for key in ("type", "chart"):
            if key in sample.extra:
                counts.setdefault(key, Counter())[sample.extra[key]] += 1
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "items.jsonl", items)
    remove_stale(out, {path for row in train for path in (row.get("image"), row.get("audio")) if path})
    # The stamp last: it marks a finished dataset (synthesize_once).
    write_json(out / STAMP, _stamp(task, n, seed, level, voice))
    return {"task": task, "level": level, "n": n, "seed": seed, "out": str(out),
            "counts": {key: dict(sorted(c.items())) for key, c in counts.items()}}


def check_out(out: Path, overwrite: bool) -> None:
    """A FileExistsError unless `out` is new or empty, or `overwrite` is given and it holds only what
    `synthesize` writes (another kind of folder is never emptied)."""
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names:
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty ({len(names)} entries); pass --overwrite to replace the "
                              "synthetic set it holds")
    foreign = [name for name in names if name not in SYNTH_NAMES and not _unfinished(name)]
    if foreign:
        raise FileExistsError(f"{out} holds files that `data synth` does not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); --overwrite replaces a synthetic set only")


def remove_stale(out: Path, kept: set[str]) -> None:
    """Removes every media file of an earlier set that the new one did not write (`kept`: paths relative to
    `out`), media folders left empty, and temporary files of an interrupted write."""
    for folder in (out / name for name in ("images", "audio")):
        if folder.is_dir():
            for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                elif not path.is_dir() and path.relative_to(out).as_posix() not in kept:
                    path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
    for path in out.iterdir():
        if _unfinished(path.name):
            path.unlink()


def _unfinished(name: str) -> bool:
    """A temporary file of the atomic writer (`.train.jsonl.XXXX.tmp`), left by a killed write."""
    return name.startswith(".") and name.endswith(".tmp")


def synthesize_once(task: str, out: str | Path, n: int, seed: int = 0, level: str = "easy") -> bool:
    """Synthesise into `out` unless it already holds this very dataset; True when it wrote it.

    The stamp holds the arguments and a hash of this generator's source, so a folder written by an
    older generator (or an interrupted run) is written again instead of being reused unnoticed."""
    try:
        current = json.loads((Path(out) / STAMP).read_text(encoding="utf-8")) == _stamp(task, n, seed, level, "tones")
    except (OSError, ValueError):
        current = False
    if not current:
        synthesize(task, out, n, seed=seed, level=level, overwrite=True)
    return not current



def _stamp(task: str, n: int, seed: int, level: str, voice: str) -> dict:
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return {"task": task, "n": n, "seed": seed, "level": level, "voice": voice, "generator": source}


# ----------------------------------------------------------------------------------------------- OCR


@lru_cache(maxsize=None)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """Matplotlib's bundled DejaVu, laid out by the basic engine so output does not depend on libraqm."""
    return ImageFont.truetype(str(FONT_DIR / name), size, layout_engine=ImageFont.Layout.BASIC)


def _ocr_sample(rng: random.Random, level: str, index: int) -> Sample:
    image, text, font, size = OCR_LEVELS[level](rng)
    return Sample(image, OCR_QUESTION, text, {"type": "ocr", "meta": {"font": Path(font).stem, "size": size}})


def ocr_easy(rng: random.Random) -> tuple[Image.Image, str, str, int]:
    text = "".join(rng.choices(OCR_EASY_CHARS, k=rng.randint(4, 8)))
    image = Image.new("RGB", OCR_EASY_SIZE, "white")
    font = load_font(OCR_EASY_FONT, OCR_EASY_FONT_SIZE)
    draw = ImageDraw.Draw(image)
    for k, char in enumerate(text):
        draw.text((OCR_EASY_CELL * k + OCR_EASY_CELL // 2, OCR_EASY_SIZE[1] // 2), char, fill="black", font=font, anchor="mm")
    return image, text, OCR_EASY_FONT, OCR_EASY_FONT_SIZE


def _ocr_medium(rng: random.Random) -> tuple[Image.Image, str, str, int]:
    text = "".join(rng.choices(OCR_EASY_CHARS, k=rng.randint(4, 8)))
    name, size = rng.choice(OCR_MEDIUM_FONTS), rng.randint(*OCR_MEDIUM_FONT_SIZE)
    image = Image.new("RGB", OCR_EASY_SIZE, "white")
    font, draw = load_font(name, size), ImageDraw.Draw(image)
    across, up = OCR_MEDIUM_JITTER
    for k, char in enumerate(text):
        centre = (OCR_EASY_CELL * k + OCR_EASY_CELL // 2 + rng.randint(-across, across),
                  OCR_EASY_SIZE[1] // 2 + rng.randint(-up, up))
        draw.text(centre, char, fill="black", font=font, anchor="mm")
    return image, text, name, size


def _ocr_dense(rng: random.Random) -> tuple[Image.Image, str, str, int]:
    lines = ["".join(rng.choices(OCR_EASY_CHARS, k=OCR_DENSE_CELLS)) for _ in range(OCR_DENSE_LINES)]
    image = Image.new("RGB", (OCR_EASY_CELL * OCR_DENSE_CELLS, OCR_DENSE_ROW * OCR_DENSE_LINES), "white")
    font, draw = load_font(OCR_EASY_FONT, OCR_EASY_FONT_SIZE), ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        for k, char in enumerate(line):
            centre = (OCR_EASY_CELL * k + OCR_EASY_CELL // 2, OCR_DENSE_ROW * row + OCR_DENSE_ROW // 2)
            draw.text(centre, char, fill="black", font=font, anchor="mm")
    return image, " ".join(lines), OCR_EASY_FONT, OCR_EASY_FONT_SIZE


def _ocr_hard(rng: random.Random) -> tuple[Image.Image, str, str, int]:
    text = _hard_text(rng)
    name, size = rng.choice(OCR_HARD_FONTS), rng.randint(*OCR_HARD_FONT_SIZE)
    font = load_font(name, size)
    # Ink extent around the text's centre, made symmetric so a rotation about the centre stays inside.
    left, top, right, bottom = font.getbbox(text, anchor="mm")
    half_w, half_h = max(-left, right), max(-top, bottom)
    pad_x, pad_y = rng.randint(4, 16), rng.randint(3, 8)
    # Tilt no further than keeps the rotated text inside the tallest allowed image.
    room = OCR_HARD_HEIGHT[1] / 2 - pad_y - half_h - 1
    max_tilt = min(OCR_HARD_MAX_TILT, math.degrees(math.asin(min(1.0, max(0.0, room / half_w)))))
    angle = rng.uniform(-1, 1) * max_tilt if rng.random() < 0.5 else 0.0
    sin, cos = abs(math.sin(math.radians(angle))), math.cos(math.radians(angle))
    width = math.ceil(2 * (half_w * cos + half_h * sin)) + 2 * pad_x
    height = rng.randint(max(OCR_HARD_HEIGHT[0], math.ceil(2 * (half_w * sin + half_h * cos)) + 2 * pad_y), OCR_HARD_HEIGHT[1])

    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).text((width / 2, height / 2), text, fill=255, font=font, anchor="mm")
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, center=(width / 2, height / 2))
    background, colour = contrasting_colours(rng)
    image = Image.composite(Image.new("RGB", mask.size, colour), Image.new("RGB", mask.size, background), mask)
    if rng.random() < 0.5:
        noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, rng.uniform(3.0, 10.0), (height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8))
    return image, text, name, size


OCR_LEVELS: dict[str, Callable[[random.Random], tuple[Image.Image, str, str, int]]] = {
    "easy": ocr_easy, "medium": _ocr_medium, "hard": _ocr_hard, "dense": _ocr_dense,
}


def _hard_text(rng: random.Random) -> str:
    """1-3 words of 2-6 characters (at most 20 in all): random letters in varied case, or a number."""
    words = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.15:
            words.append("".join(rng.choices(string.digits, k=rng.randint(2, 4))))
            continue
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 6)))
        case = rng.choice(("lower", "upper", "title", "mixed"))
        if case == "upper":
            word = word.upper()
        elif case == "title":
            word = word.title()
        elif case == "mixed":
            word = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
        words.append(word)
    return " ".join(words)


def contrasting_colours(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(background, text) colours, redrawn until the text is readable against the background."""
    while True:
        background = tuple(rng.randrange(256) for _ in range(3))
        colour = tuple(rng.randrange(256) for _ in range(3))
        lighter, darker = sorted((_luminance(background), _luminance(colour)), reverse=True)
        if (lighter + 0.05) / (darker + 0.05) >= MIN_CONTRAST:
            return background, colour


def _luminance(rgb: tuple[int, ...]) -> float:
    """WCAG relative luminance."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


# --------------------------------------------------------------------------------------------- charts


def _chart_sample(rng: random.Random, level: str, index: int) -> Sample:
    kinds, types = CHART_KINDS[level], QUESTION_TYPES[level]
    kind, qtype = kinds[index % len(kinds)], types[index % len(types)]
    labels, values = chart_data(rng, level, kind)
    question, answer = chart_qa(rng, qtype, kind, labels, values)
    if level in ("easy", "medium"):
        image = figure_image(CHART_SIZE[level], lambda fig: easy_bar(fig, labels, values))
    else:
        image = figure_image(CHART_SIZE[level], lambda fig: hard_chart(fig, rng, kind, labels, values))
    return Sample(image, question, answer, {"type": qtype, "chart": kind, "meta": {"labels": labels, "values": values}})


def chart_data(rng: random.Random, level: str, kind: str) -> tuple[list[str], list[int]]:
    """Labels and distinct integer values (distinct, so largest/smallest never tie)."""
    if level in ("easy", "medium"):
        # Labels A, B, C... in order: the answers depend only on the bars, which a tiny model can learn.
        k = rng.randint(2, 5)
        return list(LETTERS[:k]), rng.sample(range(1, 21), k)
    k = rng.randint(3, 5 if kind == "pie" else 6)
    labels = sorted(rng.sample(LETTERS, k)) if rng.random() < 0.5 else rng.sample(WORDS, k)
    # Pie slices start at 10 so the smallest still has room for its value.
    return labels, rng.sample(range(10, 51) if kind == "pie" else range(1, 100), k)


def chart_qa(rng: random.Random, qtype: str, kind: str, labels: list[str], values: list[int]) -> tuple[str, str]:
    by_label = dict(zip(labels, values))
    if qtype == "count":
        return f"How many {COUNT_NOUN[kind]} are there?", str(len(values))
    if qtype == "largest":
        return "Which label has the largest value?", max(by_label, key=by_label.__getitem__)
    if qtype == "smallest":
        return "Which label has the smallest value?", min(by_label, key=by_label.__getitem__)
    if qtype == "value":
        label = rng.choice(labels)
        return f"What is the value of {label}?", str(by_label[label])
    a, b = rng.sample(labels, 2)
    return f"What is the difference between {a} and {b}?", str(abs(by_label[a] - by_label[b]))


def figure_image(size: tuple[int, int], draw: Callable[[Figure], None]) -> Image.Image:
    """Render on a pyplot-free Agg canvas under the default style and return the pixels as RGB."""
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(size[0] / CHART_DPI, size[1] / CHART_DPI), dpi=CHART_DPI)
        canvas = FigureCanvasAgg(fig)
        draw(fig)
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def easy_bar(fig: Figure, labels: list[str], values: list[int]) -> None:
    """One colour, no y axis, big labels: the count and the tallest bar are all there is to see."""
    ax = fig.add_axes((0.04, 0.2, 0.92, 0.78))
    x = range(len(values))
    ax.bar_label(ax.bar(x, values, width=0.6, color="tab:blue"), fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, max(values) * 1.3)
    ax.set_yticks([])
    ax.tick_params(axis="x", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def hard_chart(fig: Figure, rng: random.Random, kind: str, labels: list[str], values: list[int]) -> None:
    """Bar (vertical or horizontal), line or pie, in a random palette, every value printed on the chart."""
    colours = matplotlib.colormaps[rng.choice(PALETTES)].colors
    fig.set_layout_engine("constrained", h_pad=0.02, w_pad=0.02)
    ax = fig.add_subplot()
    if rng.random() < 0.5:
        ax.set_title(rng.choice(TITLES), fontsize=9)
    x = range(len(values))
    if kind == "pie":
        total = sum(values)
        ax.pie(values, labels=labels, colors=colours[: len(values)], startangle=rng.choice((0, 90)), counterclock=False,
               autopct=lambda pct: f"{pct * total / 100:.0f}", textprops={"fontsize": 8}, pctdistance=0.7)
    elif kind == "line":
        ax.plot(x, values, marker="o", color=colours[0])
        for xi, v in zip(x, values):
            ax.annotate(str(v), (xi, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlim(-0.4, len(values) - 0.6)
        ax.set_ylim(0, max(values) * 1.25)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    elif rng.random() < 0.3:
        ax.bar_label(ax.barh(x, values, color=colours[: len(values)]), fontsize=8, padding=2)
        ax.set_yticks(x, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.2)
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.bar_label(ax.bar(x, values, color=colours[: len(values)]), fontsize=8, padding=1)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, max(values) * 1.2)
        ax.tick_params(axis="y", labelsize=7)


# ------------------------------------------------------------------------------------------------ ASR


def _asr_sample(rng: random.Random, level: str, index: int) -> Sample:
    """Digit words, each a short tone pair with jittered pitch, length, loudness and spacing, in light noise."""
    spec = ASR_LEVEL[level]
    words = rng.choices(range(len(ASR_WORDS)), k=rng.randint(*spec["words"]))
    pieces = [np.zeros(int(rng.uniform(0.05, 0.15) * ASR_RATE))]
    for w in words:
        low, high = divmod(w, len(ASR_HIGH_HZ))
        seconds = rng.uniform(*spec["word_s"])
        t = np.arange(int(seconds * ASR_RATE)) / ASR_RATE
        tone = sum(np.sin(2 * np.pi * hz * rng.uniform(0.98, 1.02) * t + rng.uniform(0, 2 * np.pi))
                   for hz in (ASR_LOW_HZ[low], ASR_HIGH_HZ[high]))
        fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # 10 ms ramps: no clicks
        pieces += [rng.uniform(0.15, 0.35) * tone * fade, np.zeros(int(rng.uniform(*spec["gap_s"]) * ASR_RATE))]
    clip = np.concatenate(pieces)
    clip += np.random.default_rng(rng.getrandbits(64)).normal(0.0, spec["noise"], clip.shape)
    text = " ".join(ASR_WORDS[w] for w in words)
    meta = {"words": len(words), "seconds": round(len(clip) / ASR_RATE, 3)}
    return Sample(None, ASR_QUESTION, text, {"type": "asr", "meta": meta}, np.clip(clip, -1.0, 1.0).astype(np.float32))


def _espeak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng (US English, fixed speed), as a 16 kHz mono waveform."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("--voice espeak needs espeak-ng, which is not installed: `apt-get install espeak-ng` "
                           "(Debian/Ubuntu) or use the offline default --voice tones")
    wav = subprocess.run([exe, "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True, check=True).stdout
    import torch  # here: `mmllm data synth` starts without torch (seconds on a loaded machine)
    import torchaudio.functional as AF

    data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return AF.resample(torch.from_numpy(data.mean(axis=1)), rate, ASR_RATE).numpy()


TASKS: dict[str, Callable[[random.Random, str, int], Sample]] = {
    "ocr": _ocr_sample, "chart": _chart_sample, "asr": _asr_sample,
}
