"""This runtime's stand-in for trinity-rft's workflow API (see rft_runtime.workflows.trinity_compat)."""

from pkgutil import extend_path

# other folders' trinity/... (a plugin dir holding Trinity's own env workflows, unchanged) join this package
__path__ = extend_path(__path__, __name__)

__rft_compat__ = True
__version__ = "0.6.0"
