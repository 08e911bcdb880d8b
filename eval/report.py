"""Report files: a markdown table, the loss curve and sample predictions as PNGs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_loss(history: Sequence[tuple[int, float]], path: Path, title: str = "training loss") -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, lw=1)
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(predictions_file: Path, data_dir: Path, path: Path, k: int = 8, title: str = "") -> None:
    """The first k eval items: image, truth and prediction (green when scored correct)."""
    rows = [json.loads(line) for line in predictions_file.read_text(encoding="utf-8").splitlines()[:k]]
    items = {json.loads(line)["id"]: json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()}
    fig, axes = plt.subplots(len(rows), 1, figsize=(5, 1.3 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        with Image.open(data_dir / items[row["id"]]["image"]) as im:
            ax.imshow(im.convert("RGB"))
        ok = row["score"] >= 1.0
        ax.set_title(f"{row['question'][:50]}\ntruth {row['answers'][0]!r}  pred {row['prediction']!r}",
                     fontsize=7, color="green" if ok else "red")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
