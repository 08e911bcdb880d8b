"""`mmllm fit|validate|test|predict`: LightningCLI over MMLLMModule and MMDataModule."""
from __future__ import annotations

import atexit
import signal

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .checkpoint import (AtomicCheckpointIO, DataResume, RNGStates, RunCheckpoint, exported_hyperparameters,
                         find_resume_checkpoint, is_exported)
from .console import ProgressLines, on_terminal, quiet_engine
from .data import MMDataModule
from .health import BadSampleMonitor, FlatLoss
from .module import MMLLMModule, ModuleConfig
from .predict import PredictionWriter

# A run killed at any point loses at most this many steps (`--checkpoint.every_n_train_steps`).
CHECKPOINT_EVERY = 100
# Model settings that shape no weight: a value the user gives wins over a `--ckpt_path` checkpoint's.
RUN_SETTINGS = ("max_new_tokens", "gradient_checkpointing")


class MMLLMCLI(LightningCLI):
    def add_core_arguments_to_parser(self, parser) -> None:
        """`--model.*` are the fields of `ModuleConfig` itself (`--model.arch`, `--model.tile_identity`,
        `--model.lr`), each defined and documented once on the dataclass; `--data.*` are MMDataModule's but its
        processor, which comes from the model."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_class_arguments(ModuleConfig, "model", sub_configs=True)
        parser.add_class_arguments(MMDataModule, "data", fail_untyped=False, sub_configs=True, skip={"processor"})

    def instantiate_classes(self) -> None:
        """The module from the `ModuleConfig` the parser built; the data pipeline then takes the model's own
        processor, so it follows --model.arch and the encoder."""
        self.config_init = self.parser.instantiate_classes(self.config)
        self.model = MMLLMModule(self._get(self.config_init, "model"))
        self.datamodule = self._get(self.config_init, "data")
        self.datamodule.processor = self.model.processor
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def add_arguments_to_parser(self, parser) -> None:
        # Checkpoints are part of every run: `--checkpoint.*` (or `checkpoint:` in a config) sets them.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": CHECKPOINT_EVERY})
        # `predict` writes predictions.jsonl + summary.json into `--predictions.dirpath` (default: the log folder).
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def _parse_ckpt_path(self) -> None:
        """Lightning writes a `--ckpt_path` checkpoint's hyper-parameters over the whole `model` config, which
        keeps the architecture the weights need; a setting that shapes no weight (`RUN_SETTINGS`) the user
        chose, on the command line or in a --config, wins back, so `predict --model.max_new_tokens 3` is obeyed."""
        subcommand = self.config.get("subcommand")
        chosen = self.config[subcommand].get("model") if subcommand else None
        chosen = {key: chosen.get(key) for key in RUN_SETTINGS} if chosen is not None else {}
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and is_exported(ckpt_path):  # Lightning reads the settings of .ckpt files only
            if subcommand == "fit":
                raise ValueError(f"{ckpt_path} is an exported model, not a run to resume: start from its weights "
                                 "with --model.init_from")
            model = exported_hyperparameters(ckpt_path)
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        super()._parse_ckpt_path()
        defaults = self._parser(subcommand).get_defaults().get("model") if chosen else None
        for key, value in chosen.items():
            if value != defaults.get(key):
                self.config[subcommand]["model"][key] = value

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically unless the user chose their own checkpoint plugin."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """`--ckpt_path last` means the newest intact last.ckpt under every folder this run writes to (the
        root, the checkpoint folder, each logger's folder), whatever logger version wrote it; Lightning alone
        looks only in the new run's own folder."""
        kwargs = self.config_init[self.subcommand]
        if kwargs.get("ckpt_path") != "last":
            return
        folders = [self.trainer.default_root_dir, *[lg.save_dir for lg in self.trainer.loggers if lg.save_dir]]
        folders += [cb.dirpath for cb in self.trainer.checkpoint_callbacks if cb.dirpath]
        found = find_resume_checkpoint(folders)
        kwargs["ckpt_path"] = str(found) if found else None
        print(f"[mmllm] resuming from {found}" if found else
              f"[mmllm] no intact last.ckpt under {', '.join(map(str, dict.fromkeys(folders)))}; starting fresh")


def run(args: list[str] | None, extra_callbacks: list | None = None) -> MMLLMCLI:
    """Parse and run one subcommand: `args`, or with None the process's own command line (what Lightning's
    DDP launcher starts the other ranks with). `extra_callbacks` lets Python callers (the demo) observe the
    run."""
    quiet_engine()
    callbacks = [BadSampleMonitor(), FlatLoss(), RNGStates(), DataResume(), ProgressLines(), *(extra_callbacks or [])]
    try:
        cli = MMLLMCLI(
            MMLLMModule,
            MMDataModule,
            args=args,
            trainer_defaults={"callbacks": callbacks, "enable_progress_bar": on_terminal()},
            save_config_kwargs={"overwrite": True},
        )
    except SIGTERMException:  # a SystemExit without a code, which would exit 0: the run did not finish
        raise SystemExit(128 + signal.SIGTERM) from None
    atexit.unregister(close_process_group)
    atexit.register(close_process_group)
    return cli


def close_process_group() -> None:
    """Destroy the process group Lightning leaves up, at the exit of a process whose runs finished (while a run is
    failing, another rank may still wait in a collective). Left to the interpreter's teardown, gloo's threads can
    abort a process that finished its work (SIGABRT, "terminate called without an active exception"). Not after
    each run: the next run of the process (`mmllm compare`, a driver of several fits) uses the same group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
