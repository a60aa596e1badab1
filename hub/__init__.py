"""mdmhub core: canonical model, services, scheduler, ports, configuration, app and CLI.

Nothing in this package imports a protocol library (lxml-level XML code, spyne, zeep, openleadr);
those live in ``adapters/``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdmhub")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
