"""One bounded JSON call to an IdP-side HTTP endpoint (userinfo, Microsoft Graph, a token endpoint).

The answer is read as a stream and abandoned past ``max_bytes``; the call as a whole (connect, headers, body) is
bounded by ``timeout_seconds`` (``asyncio.timeout``), not only per read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from idgate.errors import ProviderError


async def bounded_json(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    reason: str,
    timeout_seconds: float,
    max_bytes: int,
    **kw: Any,
) -> Any:
    """The JSON answer (any JSON value) of a 200 response to ``method url``.

    Raises:
        ProviderError: ``reason`` for every failure — unreachable, late (``timeout_seconds``), a status other than
            200, larger than ``max_bytes`` bytes, not JSON, a URL httpx refuses; ``transient`` is True for network
            errors, time-outs and 5xx.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            async with http.stream(method, url, timeout=timeout_seconds, **kw) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ProviderError(reason, f"answer larger than {max_bytes} bytes", transient=False)
    except TimeoutError:
        raise ProviderError(reason, f"no answer within {timeout_seconds:g} s", transient=True) from None
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise ProviderError(reason, type(exc).__name__, transient=True) from None
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:  # a URL httpx cannot use (e.g. from a nextLink)
        raise ProviderError(reason, type(exc).__name__, transient=False) from None
    if response.status_code != 200:
        raise ProviderError(reason, f"HTTP {response.status_code}", transient=response.status_code >= 500)
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise ProviderError(reason, "answer is not JSON", transient=False) from None
