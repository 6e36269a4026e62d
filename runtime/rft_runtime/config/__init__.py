"""The job config: one definition for the runtime, the operator and the CRD.

    from rft_runtime.config import load_config, ConfigError
    cfg = load_config("job.yaml")      # validated, ${oc.env:...} resolved, defaults filled
"""

from rft_runtime.config.errors import ConfigError, ConfigIssue
from rft_runtime.config.layers import deep_merge
from rft_runtime.config.loader import load_config, load_config_dict, read_layers, read_yaml
from rft_runtime.config.models import JobConfig
from rft_runtime.config.secrets import API_KEY_VARS, redact, tinker_api_key

__all__ = [
    "API_KEY_VARS",
    "ConfigError",
    "ConfigIssue",
    "JobConfig",
    "deep_merge",
    "load_config",
    "load_config_dict",
    "read_layers",
    "read_yaml",
    "redact",
    "tinker_api_key",
]
