"""Hot reload of the configuration file: validate, build, swap one reference; or refuse and keep the last good one.

One :class:`Reloader` per process (built by :mod:`idgate.runtime`). :meth:`Reloader.reload` (from ``SIGHUP``,
``POST /admin/reload`` or ``idgate reload``):

1. re-reads the file with the same checks as startup (:func:`idgate.config_load.load_config`: every problem listed);
2. refuses it when a restart-only setting changed (:func:`idgate.config_reload.restart_only_changes`);
3. builds every component of the new configuration (``build``; a component that refuses a setting is one problem);
4. swaps **one reference** (:attr:`Reloader.current`) — a decision already running keeps the generation it started
   with, so it finishes on the old policy, and the next one starts on the new;
5. calls every "on config change" callback (:meth:`Reloader.subscribe`: the HAProxy decision-cache purger, a
   decision memo …) with ``(old_config, new_config)``; a callback that raises is logged, never undoes the swap.

A refused reload changes nothing and is logged as one WARNING line ``config_reload_refused`` listing every problem;
an applied one is logged as ``config_reloaded`` with the old and new policy hashes. Both carry ``seconds`` (the
reload's own duration). Reloads run one at a time (a
second waits for the first). Counters (:class:`ReloadStats`): every attempt, the refused ones, and the epoch time of
the last applied one (for ``idgate_config_reloads_total``, ``idgate_config_reload_failures_total``,
``idgate_config_last_reload_success_timestamp_seconds``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from idgate.config import Config
from idgate.config_load import load_config
from idgate.config_reload import restart_only_changes
from idgate.errors import ConfigError
from idgate.fingerprint import policy_hash

log = logging.getLogger("idgate.reload")
G = TypeVar("G")
ConfigChange = Callable[[Config, Config], object]
"""An "on config change" callback: ``(old_config, new_config)``, called after the swap; its result is ignored."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReloadResult:
    """The outcome of one reload. ``applied``: the new file is in force; ``policy``: the hash in force afterwards
    (``sha256:…``), ``previous``: before; ``problems``: why it was refused (empty when applied);
    ``restart_required``: the restart-only settings the file changed (then also in ``problems``)."""

    applied: bool
    policy: str
    previous: str
    problems: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The ``POST /admin/reload`` answer body."""
        return {
            "applied": self.applied,
            "policy": self.policy,
            "previous_policy": self.previous,
            "problems": list(self.problems),
            "restart_required": list(self.restart_required),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ReloadStats:
    """Reload counters: ``attempts`` (every reload asked), ``failures`` (refused), ``last_success`` (epoch seconds
    of the last applied reload, or of the start; the metric ``idgate_config_last_reload_success_timestamp_seconds``)."""

    attempts: int
    failures: int
    last_success: float


class Reloader(Generic[G]):
    """Holds the generation in force (``G``: whatever ``build`` returns for a configuration) and replaces it.

    Args:
        path: the configuration file, re-read on each reload.
        config: the configuration in force at start; ``current``: its generation.
        build: builds the generation of a new configuration (awaited; raising refuses the reload).
        load: reads and validates the file (default :func:`idgate.config_load.load_config`; raises ConfigError).
        clock: epoch seconds.
    """

    def __init__(
        self,
        *,
        path: str | None,
        config: Config,
        current: G,
        build: Callable[[Config], Awaitable[G]],
        load: Callable[[str], Config] = load_config,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._config = config
        self._policy = policy_hash(config)
        self._current = current
        self._build = build
        self._load = load
        self._clock = clock
        self._lock = asyncio.Lock()
        self._callbacks: list[ConfigChange] = []
        self._attempts = 0
        self._failures = 0
        self._last_success = clock()

    @property
    def current(self) -> G:
        """The generation in force (read it once per decision)."""
        return self._current

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    @property
    def policy(self) -> str:
        """The policy hash in force (``sha256:…``)."""
        return self._policy

    @property
    def stats(self) -> ReloadStats:
        """A snapshot of the counters."""
        return ReloadStats(attempts=self._attempts, failures=self._failures, last_success=self._last_success)

    def subscribe(self, callback: ConfigChange) -> None:
        """Call ``callback(old_config, new_config)`` after every applied reload (in subscription order)."""
        self._callbacks.append(callback)

    async def reload(self, *, source: str) -> ReloadResult:
        """Re-read, validate, build and swap; or refuse and keep the configuration in force. ``source`` (``sighup``,
        ``admin``) is logged. Never raises for a bad file."""
        async with self._lock:
            self._attempts += 1
            started = time.monotonic()
            result = await self._attempt()
            seconds = round(time.monotonic() - started, 4)
            if not result.applied:
                self._failures += 1
                log.warning(
                    json.dumps(
                        {
                            "event": "config_reload_refused",
                            "source": source,
                            "path": self._path,
                            "policy": self._policy,
                            "problems": list(result.problems),
                            "seconds": seconds,
                        }
                    )
                )
            else:
                log.warning(
                    json.dumps(
                        {
                            "event": "config_reloaded",
                            "source": source,
                            "path": self._path,
                            "policy": result.policy,
                            "previous_policy": result.previous,
                            "seconds": seconds,
                        }
                    )
                )
            return result

    async def _attempt(self) -> ReloadResult:
        old = self._config
        refused = ReloadResult(applied=False, policy=self._policy, previous=self._policy)
        if self._path is None:
            return _with(refused, problems=("no configuration file to reload",))
        try:
            new = await asyncio.to_thread(self._load, self._path)
        except ConfigError as exc:
            return _with(refused, problems=exc.problems)
        restart = tuple(restart_only_changes(old, new))
        if restart:
            problems = (f"needs a restart, not a reload: {', '.join(restart)}",)
            return _with(refused, problems=problems, restart_required=restart)
        try:
            generation = await self._build(new)
        except Exception as exc:  # the boundary: whatever a component refuses is one problem, never a traceback
            return _with(refused, problems=(f"the service cannot be built from this configuration: {exc}",))
        previous = self._policy
        self._current, self._config, self._policy = generation, new, policy_hash(new)  # the swap
        self._last_success = self._clock()
        for callback in tuple(self._callbacks):
            try:
                callback(old, new)
            except Exception:  # a subscriber's fault never undoes the swap
                log.exception(json.dumps({"event": "config_change_callback_failed", "callback": repr(callback)}))
        return ReloadResult(applied=True, policy=self._policy, previous=previous)


def _with(result: ReloadResult, *, problems: tuple[str, ...], restart_required: tuple[str, ...] = ()) -> ReloadResult:
    return ReloadResult(
        applied=False,
        policy=result.policy,
        previous=result.previous,
        problems=problems,
        restart_required=restart_required,
    )
