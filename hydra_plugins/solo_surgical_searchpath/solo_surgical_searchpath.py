"""Hydra search-path plugin of solo-surgical.

Hydra imports every module under the ``hydra_plugins`` namespace package (which must have
no ``__init__.py``) when any Hydra app starts, and re-executes them on each scan: this module
therefore imports nothing heavy and has no side effect at import. When Hydra builds the config
search path it appends solo-surgical's solo-learn configs, and, if the app has already imported
solo-learn's method registry (``main_pretrain.py`` does, before ``main()``), registers the
``distill_*`` / ``teacher_*`` methods into it. Other Hydra apps pay one ``sys.modules`` lookup.
"""
from __future__ import annotations

import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SoloSurgicalSearchPathPlugin(SearchPathPlugin):
    """Adds ``pkg://solo_surgical.hosts.solo.configs`` and registers the methods into solo-learn."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="solo-surgical", path="pkg://solo_surgical.hosts.solo.configs")
        if "solo.methods" in sys.modules:
            from solo_surgical.hosts.solo import register

            register()
