"""Configuration: the typed tree (model.py) and where it is read from (load.py)."""

from relaygate.config.load import load_config
from relaygate.config.model import (
    ClientConfig,
    Config,
    KeyLimits,
    KeySpec,
    PriceConfig,
    ProviderConfig,
    RetryConfig,
    RoutingConfig,
)

__all__ = [
    "ClientConfig",
    "Config",
    "KeyLimits",
    "KeySpec",
    "PriceConfig",
    "ProviderConfig",
    "RetryConfig",
    "RoutingConfig",
    "load_config",
]
