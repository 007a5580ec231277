from rlvr.config.load import ConfigError, apply_overrides, load_config, load_yaml, to_yaml, validate
from rlvr.config.schema import Config, Plugin

__all__ = ["Config", "ConfigError", "Plugin", "apply_overrides", "load_config", "load_yaml", "to_yaml", "validate"]
