"""Turns conversations, images and audio clips into model inputs: tiling, tile tags, prompt layout, tokens."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, is_dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from .config import ArchKnobs, MMLLMConfig, ProcessorConfig
from .sample import (KEY_FIELDS, KEY_FILL, TOKEN_FIELDS, KeyLayout, KVSegment, MediaLayout, ModelInputs, Placement,
                     Sample, SampleError)
from .tiling import choose_grid, tile_image, tile_tags
from .tokenizer import AUDIO_CLOSE, AUDIO_OPEN, IMAGE_CLOSE, IMAGE_OPEN, IMAGE_PAD, load_tokenizer

if TYPE_CHECKING:
    from mmllm.encoders import TowerShape

    from .audio import AudioFrontEnd

IMAGE_MARKER = "<image>"
AUDIO_MARKER = "<audio>"
MARKERS = re.compile(f"({re.escape(IMAGE_MARKER)}|{re.escape(AUDIO_MARKER)})")
IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# What the model takes as keywords (`model(**processor(text=..., images=...))`): the fields of `ModelInputs`,
# the layout under a name of its own.
MODEL_KEYWORDS = ("input_ids", "attention_mask", "labels", "pixel_values", "audio_values", "media_layout",
                  "position_ids")


def audio_tokens(frames: int, frames_per_token: int) -> int:
    """LLM tokens of a clip: the encoder's stride and the connector's grouping both round up, as one division."""
    return -(-frames // frames_per_token)


# Formats other than JPEG decode whole (3 bytes a pixel as RGB, more on the way there) however few pixels the
# tiles need, so an image over this many pixels is refused from its header, before any pixel is decoded.
MAX_DECODE_PIXELS = 50_000_000


def open_image(source: str | Path | BinaryIO, label: str, max_side: int, tile_size: int, max_tiles: int
               ) -> Image.Image:
    """Decode and check an image (`label` names it in errors), so a bad one fails here and not mid-batch.

    Its size is checked from the header first. A JPEG is decoded scaled down (by up to 8, in the decoder)
    to no less than the tile grid it will be resized to; any other image over MAX_DECODE_PIXELS is
    refused undecoded. Any error its decoder raises, of whatever type, is a SampleError naming it."""
    try:
        with Image.open(source) as im:
            check_image_size(im, max_side)
            cols, rows = choose_grid(im.width, im.height, tile_size, max_tiles)
            im.draft("RGB", (cols * tile_size, rows * tile_size))  # a no-op for formats other than JPEG
            if im.width * im.height > MAX_DECODE_PIXELS:
                raise SampleError(f"{label} of {im.width}x{im.height} pixels is over the {MAX_DECODE_PIXELS:,} "
                                  f"pixels decoded whole (only a JPEG decodes scaled down); downscale it")
            im.load()
            return im.convert("RGB")
    except SampleError:
        raise
    except Exception as exc:  # the decoders' own errors: OSError, ValueError, SyntaxError, DecompressionBombError...
        raise SampleError(f"cannot decode {label}: {type(exc).__name__}: {exc}") from None


def check_image_size(image: Image.Image, max_side: int) -> None:
    w, h = image.size
    if min(w, h) < 1 or max(w, h) > max_side:
        raise SampleError(f"image size {w}x{h} is outside 1..{max_side} pixels per side")


class MMLLMProcessor(ProcessorMixin):
    """Builds the decoder sequence for one point of the architecture space (`ArchKnobs`).

    A tile in the sequence is its tag text followed by `tokens_per_tile` placeholder tokens, which
    the model swaps for image embeddings; one image is wrapped in `<Image>` ... `</Image>`. Audio
    clips (when the model has an audio front-end) are laid out by `audio_layout`. Conversations go
    through the tokenizer's chat template when it has one (`chunks`). Loss is taken on assistant turns only.

    A transformers processor: `save_pretrained` writes the tokenizer files and these settings
    (processor_config.json), and `AutoProcessor.from_pretrained` rebuilds it after `import mmllm`.
    `audio` is the model's speech front end: {"n_mels", "max_seconds", "frames_per_token"}.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: ProcessorConfig | dict,
        knobs: ArchKnobs | dict,
        tile_size: int,
        tokens_per_tile: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        audio: dict | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.config = config if isinstance(config, ProcessorConfig) else ProcessorConfig(**config)
        # Every processor carries a template, so `apply_chat_template` and a pipeline's chat messages work: the
        # one given, else the tokenizer's, else the plain form written as a template (`plain_template`).
        self.plain_form = plain_template(tokenizer, self.config)
        super().__init__(tokenizer, chat_template=chat_template or tokenizer.chat_template or self.plain_form)
        self.knobs = knobs if isinstance(knobs, ArchKnobs) else ArchKnobs(**knobs)
        self.tile_size, self.tokens_per_tile, self.audio = tile_size, tokens_per_tile, audio
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        # On the CPU whatever the default device: transformers builds a model it loads under the meta device.
        self.mean = torch.tensor(image_mean, dtype=torch.float32, device="cpu").view(3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32, device="cpu").view(3, 1, 1)
        self.audio_front_end = None
        if audio is not None:
            from .audio import AudioFrontEnd  # torchaudio: loaded only for audio

            tokens = partial(audio_tokens, frames_per_token=audio["frames_per_token"])
            self.audio_front_end = AudioFrontEnd(audio["n_mels"], audio["max_seconds"], tokens)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.global_slot = self.config.max_tiles  # the tile table's row for the global view (a lone tile, the thumbnail)
        self._text_cache: dict[str, list[int]] = {}

    def with_max_tiles(self, max_tiles: int) -> "MMLLMProcessor":
        """This processor tiling each image into at most `max_tiles` tiles, fewer than it was built for (the
        tile-budget sweep at eval); the global view keeps the tile-table row the model was trained with."""
        if not 1 <= max_tiles <= self.config.max_tiles:
            raise ValueError(f"max_tiles must be 1..{self.config.max_tiles} (what the model was built for), "
                             f"got {max_tiles}")
        fewer = copy.copy(self)
        fewer.config = replace(self.config, max_tiles=max_tiles)
        return fewer

    @classmethod
    def from_config(cls, spec: MMLLMConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                    tower: "TowerShape | None" = None) -> "MMLLMProcessor":
        """The processor of the model `spec` describes, from the config alone: the tower's geometry and
        normalisation are read without its weights and no LLM is built, so data can be prepared and checked
        before (or without) a model. `MMLLM` builds its own processor here too, passing the tokenizer it loaded
        and the shape of the tower it built."""
        from mmllm.connectors import PixelShuffle
        from mmllm.encoders import audio_stride, tower_shape  # timm, open_clip: loaded only when needed

        tower = tower or tower_shape(spec.encoder)
        height, width = tower.image_size
        if height != width:
            raise ValueError(f"tiles are square; encoder {spec.encoder.model} takes {height}x{width}")
        rows, cols = PixelShuffle(tower.grid, spec.pixel_shuffle).out_grid
        audio = None
        if spec.audio is not None:  # the connector stacks or pools `factor` states into one LLM token
            audio = {"n_mels": spec.audio.n_mels, "max_seconds": spec.audio.max_seconds,
                     "frames_per_token": audio_stride(spec.audio) * spec.audio.factor}
        tokenizer = tokenizer or load_tokenizer(spec.processor.tokenizer or spec.llm.name_or_path)
        return cls(tokenizer, spec.processor, spec.knobs, height, rows * cols, tower.mean, tower.std, audio)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "MMLLMProcessor":
        """transformers' loader, never running the folder's own code (its tokenizer's included), as the model's."""
        return super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "trust_remote_code": False})

    def to_dict(self) -> dict[str, Any]:
        """processor_config.json holds the `__init__` arguments (transformers' rule); dataclasses as their fields."""
        return {k: asdict(v) if is_dataclass(v) else v for k, v in super().to_dict().items()}

    # -- text ---------------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """Tokenize without specials; fixed strings (tags, prefixes) are tokenized once."""
        if text in self._text_cache:
            return self._text_cache[text]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(self._text_cache) < 4096:
            self._text_cache[text] = ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # -- images -------------------------------------------------------------------------------
    def load_image(self, path: str | Path) -> Image.Image:
        """An image file, decoded as `open_image` decodes it."""
        if not Path(path).is_file():
            raise SampleError(f"image not found: {path}")
        return self.open_image(path, f"image {path}")

    def open_image(self, source: str | Path | BinaryIO, label: str) -> Image.Image:
        """`open_image` at this processor's tile size, tile count and largest side."""
        return open_image(source, label, self.config.max_image_side, self.tile_size, self.config.max_tiles)

    def tiles(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised tiles [n, 3, S, S] of one image and its (cols, rows) grid."""
        check_image_size(image, self.config.max_image_side)
        tiles, grid = tile_image(image.convert("RGB"), self.tile_size, self.config.max_tiles, self.config.use_thumbnail)
        pixels = torch.from_numpy(np.stack([np.asarray(t, dtype=np.float32) for t in tiles])).permute(0, 3, 1, 2)
        return (pixels / 255.0 - self.mean) / self.std, grid

    def image_layout(self, n_tiles: int, grid: tuple[int, int], image: int) -> Placement:
        """How one image enters the model (docs/paper.md), following the knobs.

        - tiles_in_sequence "all" (D): every tile's tag text + placeholders in the decoder sequence.
        - "none" (X): the tiles (thumbnail included) are cross-attention keys/values; with
          `tags_own_tile` the tag text stays in the sequence and each tag token sees only its tile.
        - "thumbnail" (H): the thumbnail (or the lone tile) as placeholders in the sequence; the
          regular tiles are keys/values, their tags going with them.
        """
        tags = tile_tags(self.config.tile_tag, grid, n_tiles)
        n_regular = grid[0] * grid[1]
        in_sequence = {"all": range(n_tiles), "thumbnail": [n_tiles - 1], "none": []}[self.knobs.tiles_in_sequence]
        ids, token_tile, slots, kv = list(self.text_ids(IMAGE_OPEN)), [], [], []
        for k, tag in enumerate(tags):
            tag_ids = self.text_ids(tag) if tag else []
            if k in in_sequence:
                ids += tag_ids + [self.image_token_id] * self.tokens_per_tile
                slots.append(k)
                continue
            if self.knobs.tags_own_tile:
                token_tile += [-1] * (len(ids) - len(token_tile)) + [k] * len(tag_ids)
                ids += tag_ids
            slot = k if n_regular > 1 and k < n_regular else self.global_slot  # the global view's own row
            kv.append(KVSegment("tile", k, image, k, tuple(tag_ids), slot))
        ids += self.text_ids(IMAGE_CLOSE)
        token_tile += [-1] * (len(ids) - len(token_tile))
        return Placement(ids, token_tile, slots, kv)

    # -- audio --------------------------------------------------------------------------------
    def front_end(self) -> "AudioFrontEnd":
        if self.audio_front_end is None:
            raise SampleError("audio given but this model has no audio encoder (set model.audio in the config)")
        return self.audio_front_end

    def load_audio(self, path: str | Path) -> np.ndarray:
        return self.front_end().load(path)

    def audio_layout(self, n_tokens: int, media: int, clip: int) -> Placement:
        """How one clip enters the model; it is one segment (audio is not tiled).

        - tiles_in_sequence "all" (D): `<Audio>` + one placeholder per token of real audio + `</Audio>`.
        - otherwise (X and H): only `<Audio></Audio>` in the sequence; the clip's tokens are cross-attention
          keys/values. H puts the image thumbnail in the sequence to give the decoder a cheap global
          view of the layout; a clip has no such summary short of pooling most of it away, and
          transcription needs the full-rate tokens, which cross-attention reaches without lengthening
          the sequence (why H sends tiles there). So H treats audio exactly as X does.
        Its slots and segment carry the clip's index within the sample.
        """
        in_sequence = self.knobs.tiles_in_sequence == "all"
        placeholders = [self.image_token_id] * (n_tokens if in_sequence else 0)
        ids = self.text_ids(AUDIO_OPEN) + placeholders + self.text_ids(AUDIO_CLOSE)
        return Placement(ids, [-1] * len(ids), [clip] if in_sequence else [],
                         [] if in_sequence else [KVSegment("audio", clip, media, 0, (), -1)])

    # -- samples ------------------------------------------------------------------------------
    def chunks(self, conversations: Sequence[dict], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """The conversation as text chunks, each tokenized on its own, True on the assistant's (the labels).

        With a chat template of its own (the processor's, else the tokenizer's), the text is the template's, as
        the LLM saw it in instruction tuning; otherwise the plain `User: ...\nAssistant: ...</s>` form.
        Media markers stay in the text: the template passes them through and `encode` expands them.
        """
        turns = []
        for turn in conversations:
            if turn.get("from") not in ROLES:
                raise SampleError(f"unknown conversation role {turn.get('from')!r} (expected human/gpt)")
            turns.append({"role": ROLES[turn["from"]], "content": turn.get("value")})
        if self.chat_template == self.plain_form:  # the same text, in its own chunks
            return self.plain_chunks(turns, add_generation_prompt)
        return self.template_chunks(turns, add_generation_prompt, self.chat_template)

    def plain_chunks(self, turns: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """Prefixes and contents as separate chunks, as models trained on this form tokenized them."""
        tok = self.tokenizer
        chunks = [] if tok.bos_token is None else [(tok.bos_token, False)]
        for turn in turns:
            if turn["role"] == "user":
                chunks += [(self.config.user_prefix, False), (turn["content"], False)]
            else:
                chunks += [(self.config.assistant_prefix, False), (turn["content"] + tok.eos_token, True)]
        if add_generation_prompt:
            chunks.append((self.config.assistant_prefix, False))
        return chunks

    def template_chunks(self, turns: list[dict], add_generation_prompt: bool, template: str) -> list[tuple[str, bool]]:
        """The template's text, cut around each assistant turn: what rendering the turn adds after the prompt
        that asks for it (`add_generation_prompt`), less trailing whitespace. The turn thus ends with its end
        marker (ChatML's `<|im_end|>`, where generation stops); the newline after it is template glue."""

        def render(n: int, generation_prompt: bool) -> str:
            return self.tokenizer.apply_chat_template(
                turns[:n], chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
            )

        if not turns or turns[0]["role"] != "user":  # the first answer's prompt would be an empty conversation
            raise SampleError("with a chat template a conversation starts with a human turn")
        text, chunks, done = render(len(turns), add_generation_prompt), [], 0
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            start, end = render(i, True), render(i + 1, False).rstrip()
            if not (end.startswith(start) and text.startswith(end)):
                raise SampleError("the chat template renders earlier turns differently once later turns follow, "
                                  "so the assistant's tokens cannot be told apart")
            chunks += [(text[done:len(start)], False), (text[len(start):len(end)], True)]
            done = len(end)
        return chunks + [(text[done:], False)]

    def encode(
        self,
        conversations: Sequence[dict],
        images: Sequence[Image.Image],
        add_generation_prompt: bool = False,
        audio: Sequence[np.ndarray] = (),
    ) -> Sample:
        """One sample: its tokens, labels (answer tokens only), pixel values, audio features and layout.

        `<image>` and `<audio>` markers in human turns take the images and clips in order; a token's
        cross-attention sees the most recent media item (OpenFlamingo rule)."""
        return self.encode_chunks(self.chunks(conversations, add_generation_prompt), images, audio)

    def encode_chunks(self, chunks: Sequence[tuple[str, bool]], images: Sequence[Image.Image],
                      audio: Sequence[np.ndarray] = ()) -> Sample:
        """`encode` of text chunks (True: an answer, which the labels cover), markers expanded in the others."""
        tiled = [self.tiles(im) for im in images]
        clips = [self.front_end().features(wave) for wave in audio]
        for marker, given in ((IMAGE_MARKER, len(images)), (AUDIO_MARKER, len(audio))):
            n_markers = sum(text.count(marker) for text, _ in chunks)
            if n_markers != given:
                noun = "image" if marker == IMAGE_MARKER else "audio clip"
                raise SampleError(f"{n_markers} {marker} marker(s) in the text but {given} {noun}(s)")
        front = self.audio_front_end
        window = (front.n_mels, front.n_frames) if front is not None else (0, 0)
        sample = Sample(
            [], [], [], [],
            torch.cat([p for p, _ in tiled]) if tiled else torch.zeros(0, 3, self.tile_size, self.tile_size),
            [len(p) for p, _ in tiled],
            torch.stack([v for v, _, _ in clips]) if clips else torch.zeros(0, *window),
            [f for _, f, _ in clips], truncated=[note for _, _, note in clips if note])
        media = image = clip = -1
        offset = 0  # the sample's tiles before this image

        def add(ids: list[int], labels: list[int] | None = None, tiles: list[int] | None = None) -> None:
            sample.input_ids.extend(ids)
            sample.labels.extend(labels or [IGNORE_INDEX] * len(ids))
            sample.token_media.extend([media] * len(ids))
            sample.token_tile.extend(tiles or [-1] * len(ids))

        def place(kind: str, placement: Placement, first: int) -> None:
            """A media item's tokens, its segments numbered on from the sample's `first` of their kind."""
            start = len(sample.input_ids)
            add(placement.ids, tiles=placement.tile)
            sample.slots += [(kind, first + k) for k in placement.slots]
            sample.kv += [seg._replace(index=first + seg.index, start=start) for seg in placement.kv]
            sample.media_end = len(sample.input_ids)

        for text, is_answer in chunks:
            if is_answer:
                answer = self.text_ids(text)
                add(answer, answer)
                continue
            for piece in MARKERS.split(text):
                if piece == IMAGE_MARKER:
                    media, image = media + 1, image + 1
                    pixels, grid = tiled[image]
                    place("tile", self.image_layout(len(pixels), grid, media), offset)
                    offset += len(pixels)
                elif piece == AUDIO_MARKER:
                    media, clip = media + 1, clip + 1
                    place("audio", self.audio_layout(front.tokens_for_frames(clips[clip][1]), media, clip), 0)
                else:
                    add(self.text_ids(piece))
        return sample

    def encode_prompt(self, question: str, images: Sequence[Image.Image], audio: Sequence[np.ndarray] = ()) -> Sample:
        """A generation prompt: the question (one marker per image and clip; missing ones are put first)
        and the assistant prefix."""
        question = self.prompt_text(question, images, audio)
        return self.encode([{"from": "human", "value": question}], images, add_generation_prompt=True, audio=audio)

    @staticmethod
    def prompt_text(question: str, images: Sequence[Image.Image], audio: Sequence[np.ndarray] = ()) -> str:
        """The question with one marker per image and clip; missing markers are put first."""
        if images and IMAGE_MARKER not in question:
            question = "".join(IMAGE_MARKER + "\n" for _ in images) + question
        if len(audio) and AUDIO_MARKER not in question:
            question = "".join(AUDIO_MARKER + "\n" for _ in audio) + question
        return question

    # -- transformers' calls ------------------------------------------------------------------
    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, audio: Any = None,
                 return_tensors: str | None = "pt", padding: bool | str = True, **kwargs: Any) -> BatchFeature:
        """Model-ready inputs, as every transformers processor gives them: `model(**inputs)`,
        `model.generate(**inputs)` and `pipeline("image-text-to-text")` take them.

        `text` is one prompt or a batch. A prompt that opens as the chat template opens a conversation (what
        `apply_chat_template` returned) is taken as it stands; any other is the user's question, framed as
        `answer` frames it. `<image>` / `<audio>` markers place the media; missing ones go first. `images`: one
        image or a list per prompt (with one prompt, a flat list is its images); `audio` likewise, as 16 kHz
        waveforms. Rows are left-padded to the longest (the only padding there is)."""
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in ("truncation", "add_special_tokens"))
        if unknown or return_tensors not in ("pt", None) or padding not in (True, "longest"):
            raise ValueError(f"MMLLMProcessor takes text, images, audio and return_tensors='pt' (padded to the "
                             f"longest); not {unknown or f'return_tensors={return_tensors!r}, padding={padding!r}'}")
        if text is None:
            raise ValueError("MMLLMProcessor needs text: the prompt (its images are placed by <image> markers)")
        prompts = [text] if isinstance(text, str) else list(text)
        per_prompt = [per_sample(images, len(prompts), "images"), per_sample(audio, len(prompts), "audio")]
        opening = self.conversation_opening()
        samples = []
        for prompt, ims, clips in zip(prompts, *per_prompt):
            ims = [im if isinstance(im, Image.Image) else self.load_image(im) for im in ims]
            if opening and prompt.startswith(opening):
                samples.append(self.encode_chunks([(self.prompt_text(prompt, ims, clips), False)], ims, clips))
            else:
                samples.append(self.encode_prompt(prompt, ims, clips))
        return BatchFeature(self.collate(samples).keywords())

    def conversation_opening(self) -> str:
        """What the chat template writes before the first user turn's content (a rendered prompt starts so)."""
        mark = "\x00question\x00"
        rendered = "".join(text for text, _ in self.chunks([{"from": "human", "value": mark}]))
        return rendered.split(mark)[0]

    def apply_chat_template(self, conversation: Sequence[dict] | Sequence[Sequence[dict]],
                            chat_template: str | None = None, add_generation_prompt: bool = False,
                            tokenize: bool = False, return_dict: bool = False, return_tensors: str | None = "pt",
                            continue_final_message: bool = False, processor_kwargs: dict | None = None,
                            **kwargs: Any) -> str | list[str] | BatchFeature | torch.Tensor:
        """transformers' chat call on messages in its format (`content` a string, or parts `{"type": "text",
        "text"}` / `{"type": "image", "image" | "url" | "path"}` / `{"type": "audio", "audio"}`): the text of
        the prompt (`tokenize=False`), or the model's inputs, encoded exactly as a training conversation is (the
        labels cover the assistant turns)."""
        unsupported = sorted(k for k, v in kwargs.items() if v)  # tools, documents, assistant masks, ...
        if unsupported or continue_final_message or (chat_template and chat_template != self.chat_template):
            raise ValueError(f"MMLLMProcessor.apply_chat_template renders its own template; not "
                             f"{unsupported or ('continue_final_message' if continue_final_message else 'chat_template')}")
        batched = bool(conversation) and not isinstance(conversation[0], dict)
        conversations = list(conversation) if batched else [conversation]
        samples, texts = [], []
        for messages in conversations:
            turns, images, clips = self.from_messages(messages)
            chunks = self.chunks(turns, add_generation_prompt)
            texts.append("".join(text for text, _ in chunks))
            if tokenize:
                samples.append(self.encode_chunks(chunks, images, clips))
        if not tokenize:
            return texts if batched else texts[0]
        inputs = BatchFeature(self.collate(samples).keywords())
        return inputs if return_dict else inputs["input_ids"]

    def from_messages(self, messages: Sequence[dict]) -> tuple[list[dict], list[Image.Image], list[np.ndarray]]:
        """transformers' chat messages as our conversation (markers where the media were) and the media."""
        turns, images, clips = [], [], []
        for i, message in enumerate(messages):
            content, text = message.get("content"), []
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
                kind = part.get("type")
                if kind == "text":
                    text.append(part.get("text", ""))
                elif kind == "image":
                    source = next((part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)
                    images.append(source if isinstance(source, Image.Image) else self.local_image(source, i))
                    text.append(IMAGE_MARKER)
                elif kind == "audio":
                    clips.append(np.asarray(part["audio"], dtype=np.float32) if not isinstance(part.get("audio"), str)
                                 else self.load_audio(part["audio"]))
                    text.append(AUDIO_MARKER)
                else:
                    raise SampleError(f"message {i}: content part of type {kind!r} (expected text, image or audio)")
            value = "".join(t + "\n" if t in (IMAGE_MARKER, AUDIO_MARKER) else t for t in text)
            turns.append({"from": message.get("role"), "value": value})
        return turns, images, clips

    def local_image(self, source: Any, message: int) -> Image.Image:
        """An image a message names: a local file (nothing is fetched at run time)."""
        if not isinstance(source, (str, Path)) or str(source).startswith(("http://", "https://")):
            raise SampleError(f"message {message}: image {str(source)[:80]!r} is not a local file or a PIL image "
                              "(mmllm fetches nothing over the network)")
        return self.load_image(str(source).removeprefix("file://"))

    def collate(self, samples: Sequence[Sample]) -> ModelInputs:
        """Left-pad to the longest sample; tiles of all samples are stacked in sample order, then clips."""
        width = max(len(s.input_ids) for s in samples)
        batch = {key: torch.full((len(samples), width), fill, dtype=torch.long) for key, fill in (
            ("input_ids", self.tokenizer.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX),
            ("token_media", -1), ("token_tile", -1))}
        n_tiles = sum(len(s.pixel_values) for s in samples)
        slots, kv, tiles, clips = [], [], 0, 0
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            for key in TOKEN_FIELDS:
                batch[key][row, width - n:] = torch.tensor(getattr(s, key))
            batch["attention_mask"][row, width - n:] = 1
            first = {"tile": tiles, "audio": n_tiles + clips}  # the sample's first segment of each kind
            slots += [first[kind] + i for kind, i in s.slots]
            kv.append([seg._replace(index=first[seg.kind] + seg.index) for seg in s.kv])
            tiles += len(s.pixel_values)
            clips += len(s.audio_frames)
        frames = [f for s in samples for f in s.audio_frames]
        lengths = [self.tokens_per_tile] * n_tiles + [self.audio_front_end.tokens_for_frames(f) for f in frames]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        splice = [r for i in slots for r in range(offsets[i], offsets[i + 1])]
        layout = MediaLayout(torch.tensor(slots, dtype=torch.long), batch["token_media"], batch["token_tile"], kv,
                             torch.tensor(frames, dtype=torch.long), self.key_layout(kv, lengths, offsets),
                             torch.tensor(splice, dtype=torch.long), offsets[-1])
        answered = bool((batch["labels"] != IGNORE_INDEX).any())  # read here on the CPU, never from a device
        return ModelInputs(batch["input_ids"], batch["attention_mask"], batch["labels"] if answered else None,
                           torch.cat([s.pixel_values for s in samples]),
                           torch.cat([s.audio_values for s in samples]), layout)

    def text_layout(self, shape: torch.Size | tuple[int, int]) -> MediaLayout:
        """The layout of a batch of text alone (bare `input_ids`): no media anywhere."""
        rows, width = shape
        nothing = torch.full((rows, width), -1, dtype=torch.long)
        kv: list[list[KVSegment]] = [[] for _ in range(rows)]
        empty = torch.zeros(0, dtype=torch.long)
        return MediaLayout(empty, nothing, nothing.clone(), kv, empty, self.key_layout(kv, [], [0]), empty, 0)

    def key_layout(self, kv: list[list[KVSegment]], lengths: list[int], offsets: list[int]) -> KeyLayout:
        """Each sample's keys, in its segments' order: a segment's tokens (a tag's entries first, with
        tile_identity "tag_entries"), numbered on from its media item's place in the sequence. Segment i gives
        `lengths[i]` tokens, rows `offsets[i]` on of the batch's segment tokens."""
        identity = self.knobs.tile_identity
        used = sorted({t for entries in kv for seg in entries for t in seg.tag}) if identity.startswith("tag") else []
        tag_index = {t: i for i, t in enumerate(used)}
        groups: dict[tuple[int, ...], int] = {}
        rows = []
        for entries in kv:
            keys = {f: [] for f in KEY_FIELDS}
            seen: dict[int, int] = {}
            for seg in entries:
                tags = [tag_index[t] for t in seg.tag] if identity == "tag_entries" else []
                n, m = lengths[seg.index], len(tags)
                group = groups.setdefault(seg.tag, len(groups)) if identity == "tag" and seg.tag else -1
                keys["row"] += [-1] * m + list(range(offsets[seg.index], offsets[seg.index] + n))
                keys["index"] += [-1] * m + list(range(n))
                keys["tag"] += tags + [-1] * n
                keys["slot"] += [-1] * m + [seg.slot if identity == "learned" else -1] * n
                keys["group"] += [-1] * m + [group] * n
                keys["media"] += [seg.media] * (m + n)
                keys["tile"] += [seg.tile] * (m + n)
                first = seen.get(seg.media, 0)  # keys count on from the media item's place in the sequence
                keys["position"] += range(seg.start + first, seg.start + first + m + n)
                seen[seg.media] = first + m + n
            rows.append(keys)
        width = max([len(k["row"]) for k in rows], default=0)
        padded = {f: torch.tensor([k[f] + [KEY_FILL[f]] * (width - len(k[f])) for k in rows], dtype=torch.long)
                  .reshape(len(rows), width) for f in KEY_FIELDS}
        return KeyLayout(**padded, tag_ids=used, groups=[[tag_index[t] for t in g] for g in groups])

    def pack(self, samples: Sequence[Sample], length: int) -> ModelInputs:
        """Samples concatenated into as few rows of at most `length` tokens as first-fit finds (in their order; a
        longer sample has a row of its own). Positions restart at every sample, so no token attends across
        samples, and each sample's media are numbered apart, so its cross-attention sees only its own: the loss
        equals the same samples' unpacked."""
        rows: list[list[Sample]] = []
        room: list[int] = []
        for sample in samples:
            n = len(sample.input_ids)
            fit = next((i for i, left in enumerate(room) if n <= left), None)
            if fit is None:
                rows.append([sample])
                room.append(length - n)
            else:
                rows[fit].append(sample)
                room[fit] -= n
        inputs = self.collate([concatenated(row) for row in rows])
        width = inputs.input_ids.shape[1]
        positions = torch.zeros_like(inputs.input_ids)
        for r, row in enumerate(rows):  # left padding first (a sequence of its own), then each sample from 0
            lengths = [width - sum(len(s.input_ids) for s in row)] + [len(s.input_ids) for s in row]
            positions[r] = torch.cat([torch.arange(n) for n in lengths])
        return replace(inputs, position_ids=positions)


def per_sample(media: Any, n: int, noun: str) -> list[list]:
    """`images=` / `audio=` as transformers' callers give them, as one list per prompt: None, one item, a flat
    list (of one prompt's items, or one item per prompt), or a list per prompt."""
    if media is None:
        return [[] for _ in range(n)]
    if not isinstance(media, (list, tuple)):
        media = [media]
    if all(isinstance(m, (list, tuple)) for m in media) and len(media) == n:
        return [list(m) for m in media]
    if n == 1:
        return [list(media)]
    if len(media) == n:
        return [[m] for m in media]
    raise ValueError(f"{len(media)} {noun} for {n} prompts: give one per prompt or a list per prompt")


def plain_template(tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig) -> str:
    """The plain `User: ...\nAssistant: ...</s>` form (`plain_chunks`) as a chat template."""
    bos = json.dumps(tokenizer.bos_token or "")
    user, assistant, eos = (json.dumps(t) for t in (config.user_prefix, config.assistant_prefix, tokenizer.eos_token))
    return (f"{{{{ {bos} }}}}{{% for m in messages %}}{{% if m['role'] == 'user' %}}{{{{ {user} + m['content'] }}}}"
            f"{{% else %}}{{{{ {assistant} + m['content'] + {eos} }}}}{{% endif %}}{{% endfor %}}"
            f"{{% if add_generation_prompt %}}{{{{ {assistant} }}}}{{% endif %}}")


def concatenated(samples: Sequence[Sample]) -> Sample:
    """Encoded samples as one: sequences end to end, tiles and clips in order, media items and segments
    renumbered after the earlier samples' (a segment's `start` stays within its own sample, as its positions)."""
    out = Sample([], [], [], [], torch.cat([s.pixel_values for s in samples]), [],
                 torch.cat([s.audio_values for s in samples]), [])
    media = tiles = clips = 0
    for s in samples:
        out.input_ids += s.input_ids
        out.labels += s.labels
        out.token_tile += s.token_tile
        out.token_media += [m + media if m >= 0 else m for m in s.token_media]
        out.tiles_per_image += s.tiles_per_image
        out.audio_frames += s.audio_frames
        out.truncated += s.truncated
        first = {"tile": tiles, "audio": clips}
        out.slots += [(kind, first[kind] + i) for kind, i in s.slots]
        out.kv += [seg._replace(index=first[seg.kind] + seg.index, media=media + seg.media) for seg in s.kv]
        media += len(s.tiles_per_image) + len(s.audio_frames)
        tiles, clips = tiles + len(s.pixel_values), clips + len(s.audio_frames)
    return out


Processor = MMLLMProcessor  # the name train/ imports
