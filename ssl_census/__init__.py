"""ssl-census: self-supervised learning on the CELLxGENE census, from census to metric."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssl-census")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
