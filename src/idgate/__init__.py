"""idgate: identity-aware reverse-proxy sidecar for HAProxy."""

__version__ = "0.1.0"
