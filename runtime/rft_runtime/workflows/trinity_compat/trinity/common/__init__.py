"""Stand-in for trinity.common."""

from pkgutil import extend_path

# other folders' trinity/... (a plugin dir holding Trinity's own env workflows, unchanged) join this package
__path__ = extend_path(__path__, __name__)
