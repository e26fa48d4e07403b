"""The policy hash: one short fingerprint of a loaded configuration, for ``idgate_config_info{policy=…}``.

``sha256:<64 hex>`` of the normalised configuration: the validated :class:`~idgate.config.Config` dumped as JSON
(pydantic ``mode="json"``: defaults filled in, paths as loaded) with sorted keys and no whitespace. Secrets are
``SecretStr`` and dump as a fixed mask, so the hash never depends on (and never leaks) a secret: rotating a client
secret or a session key keeps the hash; changing a route, a role set, an issuer or a timeout changes it. Where a
process listens and how many worker processes it runs (:data:`PLACEMENT`) are left out, so replicas and workers
serving the same policy show the same hash.
"""

from __future__ import annotations

import hashlib
import json

from idgate.config import Config

PLACEMENT = {"server": ("host", "port", "workers", "metrics_bind"), "spoa": ("host", "port")}
"""Keys left out of the hash: where one process listens and how many workers it runs, not what it decides."""


def policy_hash(config: Config) -> str:
    """``sha256:`` + the hex SHA-256 of ``config``'s normalised JSON (secrets masked, :data:`PLACEMENT` left out).
    Computed at startup and at every reload."""
    data = config.model_dump(mode="json")
    for section, keys in PLACEMENT.items():
        if isinstance(data.get(section), dict):
            for key in keys:
                data[section].pop(key, None)
    normalised = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(normalised.encode("ascii")).hexdigest()
