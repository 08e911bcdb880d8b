"""Helpers lmms-eval imports for the tasks in this folder (`!function utils.NAME` in their YAML)."""
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The item's image; its path is relative to this folder, so the task runs from any copy of it."""
    return [Image.open(HERE / doc["image"]).convert("RGB")]
