"""Studies built from many training runs; ``transfer``: which tasks help which (``mvlpt study transfer``)."""

from __future__ import annotations

from .config import TransferConfig, load_transfer_config, transfer_config_from_dict

__all__ = ["TransferConfig", "load_transfer_config", "transfer_config_from_dict"]
