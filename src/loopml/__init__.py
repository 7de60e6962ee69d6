"""loopml: DevOps for the machine-learning lifecycle.

Importing this package has no side effects: plugins load on first use of
:func:`loopml.plugins.get_plugin_manager`, vendor SDKs only when a backend is built.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loopml")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
