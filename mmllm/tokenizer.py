"""The offline default tokenizer, and loading any Hugging Face tokenizer through the same path."""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMAGE_PAD = "<image_pad>"
SPECIALS = ("<pad>", "<s>", "</s>", IMAGE_PAD)
# Strings the processor writes around every image and clip. A real tokenizer splits them into a few
# BPE pieces; byte-level they would cost ~60 positions per image, so the offline tokenizer keeps each
# as one ordinary (decodable) token. Tile tags up to 12 tiles cover every max_tiles we ship.
IMAGE_OPEN, IMAGE_CLOSE, AUDIO_OPEN, AUDIO_CLOSE = "<Image>", "</Image>", "<Audio>", "</Audio>"
STRUCTURE = (
    IMAGE_OPEN, IMAGE_CLOSE, AUDIO_OPEN, AUDIO_CLOSE, "<tile_global_thumbnail>", *(f"<tile_{k}>" for k in range(1, 13))
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens + specials, any Unicode round-trips.

    Built with `tokenizers` and wrapped as a fast HF tokenizer, so the code that serves it also
    serves a real Llama/Qwen tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIALS))
    core.add_tokens([AddedToken(t, normalized=False, special=False) for t in STRUCTURE])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=[IMAGE_PAD],
    )


def load_tokenizer(name_or_path: str | None) -> PreTrainedTokenizerBase:
    """None -> the byte tokenizer; otherwise a local dir / hub name, given a pad and image token."""
    tok = byte_tokenizer() if name_or_path is None else saved_tokenizer(name_or_path)
    if IMAGE_PAD not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_PAD]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def saved_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer folder (or hub name) through transformers; a folder that fails to load is a ValueError that
    names the file at fault where one is: a file that is no JSON, or a tokenizer.json `tokenizers` refuses."""
    try:
        # Never run a folder's own Python, even when a terminal would let a user say yes.
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as exc:
        folder = Path(name_or_path)
        if not folder.is_dir():
            raise
        raise ValueError(f"cannot load the tokenizer of {folder}: "
                         f"{damaged_file(folder) or f'{type(exc).__name__}: {exc}'}") from None


def damaged_file(folder: Path) -> str | None:
    """Which of a folder's files keeps its tokenizer from loading, and why; None when none is seen to."""
    from tokenizers import Tokenizer

    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            return f"{path.name} is not valid JSON ({exc})"
    if (folder / "tokenizer.json").is_file():
        try:
            Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception type
            return f"tokenizer.json is not a tokenizer `tokenizers` can read ({exc})"
    return None
