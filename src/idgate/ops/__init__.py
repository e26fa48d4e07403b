"""Operator tools on top of the service: ``idgate explain`` (the real decision for a described request) and
``idgate status`` / ``idgate haproxy …`` (HAProxy's Runtime API and idgate's metrics on one screen)."""
