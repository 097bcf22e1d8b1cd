"""Lastro: an open-source transaction platform.

Each service is a subpackage with the same shape (app, api, service, domain,
store, events, openapi.yaml); shared platform code without business rules
lives in :mod:`lastro.core`; the local stack in :mod:`lastro.devstack`.
"""

__version__ = "0.1.0"
