"""Stand-in for trinity.common.models."""

from pkgutil import extend_path

# a plugin folder's own trinity/... files (Trinity's, unchanged) join this package: the modules it lacks
__path__ = extend_path(__path__, __name__)
