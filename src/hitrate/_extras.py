"""One wording for an optional part used without its extra (``pip install 'hitrate[...]'``)."""

from __future__ import annotations

__all__ = ["install_hint", "missing_extra"]


def install_hint(extra: str) -> str:
    """The command that installs *extra*: ``pip install 'hitrate[cli]'``."""
    return f"pip install 'hitrate[{extra}]'"


def missing_extra(feature: str, needs: str, extra: str, cause: ImportError) -> ModuleNotFoundError:
    """The error to raise (``from cause``) when *feature* cannot import what *extra* installs.

    It is a :class:`ModuleNotFoundError` (so an :class:`ImportError`) naming the missing
    module, with the one line a user needs::

        hitrate.prometheus needs prometheus-client: pip install 'hitrate[prometheus]'
    """
    return ModuleNotFoundError(f"{feature} needs {needs}: {install_hint(extra)}", name=cause.name)
