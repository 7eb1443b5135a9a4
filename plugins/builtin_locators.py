"""The built-in exact locators (sample id, subject id, content hash), registered through
``register_locators``; they match the request fields against the manifest columns of
:data:`unlearnops.locate.EXACT_LOCATORS`."""

from __future__ import annotations

import pandas as pd

from unlearnops import __version__, hookimpl
from unlearnops.locate import EXACT_LOCATORS
from unlearnops.requests import DeletionRequest


class ExactLocator:
    version = __version__

    def __init__(self, name: str, request_field: str, column: str):
        self.name, self.request_field, self.column = name, request_field, column

    def locate(self, request: DeletionRequest, manifest: pd.DataFrame) -> set[str]:
        wanted = getattr(request, self.request_field)
        return set(manifest.loc[manifest[self.column].isin(wanted), "sample_id"].astype(str))


@hookimpl
def register_locators(register):
    for name, (request_field, column) in EXACT_LOCATORS.items():
        register(ExactLocator(name, request_field, column))
