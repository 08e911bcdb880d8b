"""Report files: markdown tables, line and bar plots, and sample predictions as PNGs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
# Not ours to report: a fresh install names each optional font family it lacks ("findfont: ... not found").
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from mmllm.audio import load_audio  # noqa: E402


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_lines(series: dict[str, Sequence[tuple[float, float]]], path: Path, title: str, xlabel: str,
               ylabel: str, log: bool = False) -> None:
    """One line per named series of (x, y) points."""
    plot_panels({title: series}, path, xlabel, ylabel, log=log)


def plot_panels(panels: dict[str, dict[str, Sequence[tuple[float, float]]]], path: Path, xlabel: str, ylabel: str,
                log: bool = False, log_x: bool = False) -> None:
    """Side by side, one panel per title, each with one line per named series of (x, y) points."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 if len(panels) == 1 else 4 * len(panels), 3.5),
                             squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for name, points in series.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, lw=1, label=name, marker="o" if len(points) < 20 else None)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if log else "linear",
               xscale="log" if log_x else "linear")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(groups: dict[str, dict[str, float]], path: Path, title: str, ylabel: str,
              ylim: tuple[float, float] | None = (0, 1)) -> None:
    """Grouped bars: one group per key of `groups`, one bar per inner key (e.g. test set x arch)."""
    names = list(groups)
    members = list(dict.fromkeys(m for g in groups.values() for m in g))
    width = 0.8 / max(1, len(members))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names)), 3.5))
    for j, member in enumerate(members):
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [groups[n].get(member, 0.0) for n in names], width, label=member)
    ax.set_xticks([i + width * (len(members) - 1) / 2 for i in range(len(names))], names, fontsize=8,
                  rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set(title=title, ylabel=ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(predictions_file: Path, data_dir: Path, path: Path, k: int = 8, title: str = "",
                 lower_is_better: bool = False) -> None:
    """The first k eval items: image (or waveform), truth and prediction (green when scored correct:
    score 1, or 0 for an error rate)."""
    rows = [json.loads(line) for line in predictions_file.read_text(encoding="utf-8").splitlines()[:k]]
    items = {json.loads(line)["id"]: json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()}
    fig, axes = plt.subplots(len(rows), 1, figsize=(5, 1.3 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        item = items[row["id"]]
        if "image" in item:
            with Image.open(data_dir / item["image"]) as im:
                ax.imshow(im.convert("RGB"))
        else:
            ax.plot(load_audio(data_dir / item["audio"]), linewidth=0.3)
        ok = row["score"] <= 0.0 if lower_is_better else row["score"] >= 1.0
        ax.set_title(f"{row['question'][:50]}\ntruth {row['answers'][0]!r}  pred {row['prediction']!r}",
                     fontsize=7, color="green" if ok else "red", parse_math=False)  # "$" is text, not TeX
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
