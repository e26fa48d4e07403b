"""Looker as an upstream: idgate as the embedding application (signed embed URLs and cookieless sessions).

``config`` (the ``looker:`` block of a ``looker_embed`` upstream), ``embed_url`` (Looker's signed embed URL),
``mapping`` (the principal's roles → Looker permissions, models, groups and user attributes), ``cookieless`` (the
Looker API client for cookieless embed sessions) and ``routes`` (the ``/.idgate/looker/`` endpoints).
See ``docs/looker.md``.
"""
