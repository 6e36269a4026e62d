"""This runtime's stand-in for trinity-rft's workflow API (see rft_runtime.workflows.trinity_compat)."""

__rft_compat__ = True
__version__ = "0.6.0"
