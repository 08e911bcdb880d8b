"""The LightningModule: one model config + a training stage; `--model.arch` switches architecture."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from safetensors.torch import load_model
from torch import nn

from mmllm.backbone import is_lora
from mmllm.config import MMLLMConfig
from mmllm.model import MMLLM, WEIGHTS_FILE

from .checkpoint import is_sharded, read_checkpoint
from .data import Batch  # what the data module's loaders yield
from .fsdp import recompute, recomputed_llm_types
from .health import TrainingAborted, check_finite
from .schedule import lr_factor

Stage = Literal["pretrain", "sft"]


def stage_trainable(stage: Stage, freeze_llm_in_sft: bool = False, train_encoder: bool = False) -> dict[str, bool]:
    """Which parts train in a stage (docs/paper.md, training stages): the connector always; the LLM only in SFT
    (unless kept frozen, paper Table 9); the encoder only when asked (NVLM keeps it frozen)."""
    return {
        "encoder": train_encoder,
        "connector": True,
        "llm": stage == "sft" and not freeze_llm_in_sft,
    }


def parameter_table(parts: dict[str, list[nn.Parameter]], labels: dict[str, str]) -> str:
    """Parameters per part, trainable ones, and the dtypes they are stored in (the optimizer's master copy)."""
    rows = [("part", "total", "trainable", "dtype")]
    total = trainable = 0
    for name, params in parts.items():
        n = sum(p.numel() for p in params)
        t = sum(p.numel() for p in params if p.requires_grad)
        dtypes = "+".join(sorted({str(p.dtype).removeprefix("torch.") for p in params})) or "-"
        rows.append((f"{name} ({labels[name]})", f"{n:,}", f"{t:,}", dtypes))
        total, trainable = total + n, trainable + t
    rows.append(("all", f"{total:,}", f"{trainable:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows)


@dataclass
class ModuleConfig(MMLLMConfig):
    """What `--model.*` sets: the model (every `MMLLMConfig` field, the arch's knobs included) and how it trains.
    The CLI reads this dataclass itself, so each setting is defined and documented once, here or on the classes
    it extends.

    The LR warms up linearly for `warmup_steps`, then decays by a cosine to 10 %: over the whole run, or with
    `decay_steps` over only the last that many steps after holding the peak (warmup-stable-decay), so a
    from-scratch model's late learning transition is not starved of LR.

    Attributes:
        gradient_checkpointing: recompute activations in the backward pass: less memory, about a third more
            compute.
        stage: pretrain (the connector trains) or sft (the connector and the LLM train).
        freeze_llm_in_sft: keep the LLM frozen in SFT too (paper Table 9).
        train_encoder: train the vision/audio encoder as well (NVLM keeps it frozen).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: steps of linear LR warm-up.
        decay_steps: cosine-decay only the last this many steps after holding the peak; null: decay over the
            whole run.
        max_new_tokens: tokens generated per item in predict.
        init_from: start from an earlier stage's weights (a save_pretrained folder or a .ckpt, e.g. pretrain's
            before SFT) with a fresh optimizer and schedule; --ckpt_path instead resumes one interrupted run.
    """

    gradient_checkpointing: bool = False
    stage: Stage = "pretrain"
    freeze_llm_in_sft: bool = False
    train_encoder: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    decay_steps: int | None = None
    max_new_tokens: int = 32
    init_from: str | None = None

    def model_config(self) -> MMLLMConfig:
        """The model alone, as config.json stores it (no training settings)."""
        return MMLLMConfig(**{f.name: getattr(self, f.name) for f in fields(MMLLMConfig)})


class MMLLMModule(L.LightningModule):
    def __init__(self, config: ModuleConfig) -> None:
        """The model and its training, built from one `ModuleConfig`."""
        super().__init__()
        self.config = config.model_config()
        self.model = MMLLM(self.config)
        # Plain dicts only, so checkpoints load with torch.load(weights_only=True); the same flat fields as
        # `--model.*`, so Lightning's --ckpt_path reads them back. Taken after the build, which writes a loaded
        # pretrained tower's architecture into the (shared) part configs. `init_from` is left out: a checkpoint
        # of this run holds the weights itself.
        hparams = asdict(config)
        hparams.pop("init_from")
        self.save_hyperparameters(hparams)
        if config.init_from:
            load_weights(self.model, config.init_from)
        if config.gradient_checkpointing:
            use_gradient_checkpointing(self.model)
        self.split_seen = SplitSeen()
        self.trainable = stage_trainable(config.stage, config.freeze_llm_in_sft, config.train_encoder)
        names = {id(p): name for name, p in self.model.named_parameters()}
        for part, params in self.part_parameters().items():
            for p in params:
                # With LoRA the LLM trains through its adapters only; the cross-attention blocks in its layer
                # list are the connector's, and train as they would without LoRA.
                lora_gate = not self.config.llm.lora_rank or part != "llm" or is_lora(names[id(p)])
                p.requires_grad_(self.trainable[part] and lora_gate)

    @property
    def processor(self):
        return self.model.processor

    def parts(self) -> dict[str, list[nn.Module]]:
        """The units a stage freezes: the encoders (vision, and audio when configured); the connector is
        the projector, the audio connector, the tile embedding and any cross-attention blocks; the LLM."""
        m = self.model
        return {
            "encoder": [e for e in (m.encoder, m.audio_encoder) if e is not None],
            "connector": [m.projector, *m.cross_blocks().values(), *([m.audio_connector] if m.audio_connector else [])],
            "llm": [m.llm],
        }

    def part_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each parameter in exactly one part: the cross-attention blocks sit in the LLM's layer list but
        belong to the connector (earlier parts claim first)."""
        seen: set[int] = set()
        out = {}
        for name, modules in self.parts().items():
            out[name] = [p for m in modules for p in m.parameters() if id(p) not in seen]
            if name == "connector" and self.model.tile_embedding is not None:
                out[name].append(self.model.tile_embedding)
            seen |= {id(p) for p in out[name]}
        return out

    def describe(self) -> str:
        audio = self.config.audio
        n_cross = len(self.model.cross_layers())
        labels = {
            "encoder": f"{self.config.encoder.family}:{self.config.encoder.model}"
            + (f" + {audio.family} audio" if audio else ""),
            "connector": "pixel shuffle + " + type(self.model.projector).__name__
            + (f" + audio {audio.downsample} x{audio.factor} + MLP" if audio else "")
            + (f" + {n_cross} gated cross-attn" if n_cross else ""),
            "llm": self.model.llm.config.model_type
            + (f" + LoRA r={self.config.llm.lora_rank}" if self.config.llm.lora_rank else ""),
        }
        return f"arch={self.config.arch} stage={self.hparams.stage}\n" + parameter_table(self.part_parameters(), labels)

    def setup(self, stage: str) -> None:
        """The parameter table, printed before a sharding strategy wraps the model (after, each process holds
        only its shard of every parameter)."""
        if stage == "fit" and self.trainer.is_global_zero:
            print(self.describe())

    def configure_model(self) -> None:
        """FSDP2 shards the model here, when its process group exists (`NamedUnitsFSDP2.shard`)."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None:
            shard(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping by the global norm over every shard: FSDP1's root computes it across ranks (Lightning's FSDP
        precision refuses to); FSDP2's sharded gradients take torch's own clipping, which reduces over the mesh."""
        model = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(gradient_clip_val)
        elif gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_fully_sharded(self.model):
            torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout / norm-statistics drift) while the rest trains."""
        super().train(mode)
        if mode:  # the LLM first: the connector's cross-attention blocks live inside it
            for name, modules in reversed(self.parts().items()):
                for module in modules:
                    module.train(self.trainable[name])
        return self

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch.inputs).loss
        check_finite(loss, self.global_step, batch.ids)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch.ids))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.split_seen.add(batch)
        if batch.inputs is not None:  # None: every sample was bad (dropped and counted by BadSampleMonitor)
            self.log("val_loss", self.model(batch.inputs).loss, prog_bar=True, batch_size=len(batch.ids), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.split_seen.add(batch)
        if batch.inputs is not None:
            self.log("test_loss", self.model(batch.inputs).loss, batch_size=len(batch.ids), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.split_seen = SplitSeen()

    def on_test_epoch_start(self) -> None:
        self.split_seen = SplitSeen()

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # a few batches only: the full epoch decides
            self.split_seen.check(self, "val")

    def on_test_epoch_end(self) -> None:
        self.split_seen.check(self, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        """One row per item that loaded, in `batch.records` order: the item's own fields (so the rows score
        with `mmllm eval --predictions`) and its greedy `prediction`. The items skipped stay in the batch
        for the `PredictionWriter` to report."""
        if batch.inputs is None:
            return []
        out = self.model.generate(batch.inputs, max_new_tokens=self.hparams.max_new_tokens)
        return [{**record.data, "id": record.id, "prediction": self.processor.decode(row)}
                for record, row in zip(batch.records, out.tolist())]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, total=total, warmup=self.hparams.warmup_steps, decay=self.hparams.decay_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class SplitSeen:
    """Good and bad samples of one val/test epoch on this rank: a split whose samples were all dropped would
    otherwise end the run with no loss and exit 0."""

    good: int = 0
    bad: int = 0
    first_bad: str = ""

    def add(self, batch: Batch) -> None:
        self.good, self.bad = self.good + len(batch.ids), self.bad + len(batch.bad)
        self.first_bad = self.first_bad or next(iter(batch.bad), "")

    def check(self, module: L.LightningModule, split: str) -> None:
        """Stops the run (every rank alike: the counts are summed over ranks) when no sample of `split` loaded."""
        counts = torch.tensor([float(self.good), float(self.bad)], dtype=torch.float64, device=module.device)
        good, bad = module.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        if bad and not good:
            files = module.trainer.datamodule.files[split] if module.trainer.datamodule is not None else "?"
            raise TrainingAborted(f"all {int(bad)} {split} samples are bad, so there is no {split}_loss "
                                  f"(--data.{split} {files}); first: {self.first_bad or 'on another rank'}")


def load_weights(model: MMLLM, source: str) -> None:
    """Every weight of `model` from a `save_pretrained` folder or a Lightning checkpoint (a `.ckpt` file or a
    sharded checkpoint's folder, read weights-only);
    a source of another shape is refused, naming what does not fit."""
    path = Path(source)
    if path.is_dir() and not is_sharded(path):
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    elif path.exists():
        state = read_checkpoint(path)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError(f"init_from {source} is not a Lightning checkpoint (no state_dict)")
        weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
    else:
        raise FileNotFoundError(f"init_from {source}: no such checkpoint or folder")
    if missing or unexpected:
        raise ValueError(f"init_from {source} does not fit this model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]} (of {len(missing)} and {len(unexpected)})")


def use_gradient_checkpointing(model: MMLLM) -> None:
    """Every block that keeps activations for the backward pass recomputes them instead: the LLM's decoder
    layers, the encoders' blocks and the cross-attention blocks. Same losses and gradients, less memory,
    about a third more compute: what lets a 7B-class LLM train on one GPU.

    The decoder layers and gated blocks are wrapped (torch's checkpoint wrapper) rather than switched by
    transformers' flag, which acts only in training mode: a frozen LLM stays in eval mode in stage 1, yet the
    backward pass still runs through every one of its layers to reach the connector."""
    recompute(model.llm, recomputed_llm_types(model))
    for encoder in (model.encoder, model.audio_encoder):
        if encoder is not None:
            encoder.set_gradient_checkpointing(True)


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 has sharded this model (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
