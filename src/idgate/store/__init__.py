"""Shared state of idgate's replicas: revocations, the logout-token replay cache and the refresh lock.

:mod:`idgate.store.base` is the interface (:class:`~idgate.store.base.RevocationStore`),
:mod:`idgate.store.memory` serves one process, :mod:`idgate.store.redis` many replicas through Redis (or Valkey).
"""
