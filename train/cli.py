"""`mmllm fit|validate|test|predict`: LightningCLI over MMLLMModule and MMDataModule."""
from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .data import MMDataModule
from .health import BadSampleMonitor
from .module import MMLLMModule


class MMLLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data pipeline uses the model's own processor, so it follows --model.arch and the encoder.
        parser.link_arguments("model.processor", "data.processor", apply_on="instantiate")

    def before_fit(self) -> None:
        """`--ckpt_path last` means the newest last.ckpt under default_root_dir, whatever logger
        version wrote it (Lightning alone looks only in the new run's own folder)."""
        kwargs = self.config_init[self.subcommand]
        if kwargs.get("ckpt_path") != "last":
            return
        found = sorted(Path(self.trainer.default_root_dir).rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        kwargs["ckpt_path"] = str(found[-1]) if found else None
        print(f"[mmllm] resuming from {found[-1]}" if found else "[mmllm] no last.ckpt to resume from; starting fresh")


def run(args: list[str] | None, extra_callbacks: list | None = None) -> MMLLMCLI:
    """Parse and run one subcommand; `extra_callbacks` lets Python callers (the demo) observe the run."""
    callbacks = [ModelCheckpoint(save_last=True), BadSampleMonitor(), *(extra_callbacks or [])]
    # Called from Python (compare, tests) the process's own argv is not ours: hide it from LightningCLI.
    with mock.patch.object(sys, "argv", sys.argv if args is None else sys.argv[:1]):
        return MMLLMCLI(
            MMLLMModule,
            MMDataModule,
            args=args,
            trainer_defaults={"callbacks": callbacks},
            save_config_kwargs={"overwrite": True},
        )
