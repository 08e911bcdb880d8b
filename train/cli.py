"""`mmllm fit|validate|test|predict`: LightningCLI over MMLLMModule and MMDataModule."""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .data import MMDataModule
from .health import BadSampleMonitor
from .module import MMLLMModule


class MMLLMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data pipeline uses the model's own processor, so it follows --model.arch and the encoder.
        parser.link_arguments("model.processor", "data.processor", apply_on="instantiate")


def run(args: list[str], extra_callbacks: list | None = None) -> MMLLMCLI:
    """Parse and run one subcommand; `extra_callbacks` lets Python callers (the demo) observe the run."""
    callbacks = [ModelCheckpoint(save_last=True), BadSampleMonitor(), *(extra_callbacks or [])]
    return MMLLMCLI(
        MMLLMModule,
        MMDataModule,
        args=args,
        trainer_defaults={"callbacks": callbacks},
        save_config_kwargs={"overwrite": True},
    )
