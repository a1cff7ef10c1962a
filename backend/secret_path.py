"""WEBHOOK_SECRET as a path prefix: the one credential Label Studio's webhooks can carry.

LS sends webhooks without credentials to ``<backend URL>/webhook``, and calls ``/health``,
``/setup`` and ``/predict`` under the same URL. With the secret as the URL's first path segment
(``http://host:9090/<secret>``) every LS call carries it. This WSGI middleware strips a matching
first segment (compared in constant time), marks the request as having carried the secret, and
blanks the secret out of the raw request line that gunicorn's access log prints.
"""

from __future__ import annotations

import hmac
from typing import Callable, Iterable

VIA_SECRET = "al.via_secret"  # WSGI environ key: True when the request carried the secret
MASK = "<secret>"  # what access logs show instead of the secret
_LOGGED_URIS = ("RAW_URI", "REQUEST_URI")  # gunicorn's and other servers' raw request target


class SecretPathPrefix:
    """Serve a WSGI app under ``/<secret>/`` as well as at ``/``.

    ``/<secret>/webhook`` reaches the app as ``/webhook`` with ``environ[VIA_SECRET] = True``;
    anything else passes through unchanged (so ``/webhook`` arrives without the mark).
    """

    def __init__(self, app: Callable, secret: str):
        if not secret:
            raise ValueError("SecretPathPrefix needs a non-empty secret")
        self.app = app
        self._secret = secret.encode()

    def __repr__(self) -> str:
        return f"SecretPathPrefix({self.app!r}, secret={MASK!r})"

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        head, _, rest = path[1:].partition("/")
        # PATH_INFO is latin-1 by the WSGI spec; bytes keep compare_digest constant-time for any input.
        if path.startswith("/") and hmac.compare_digest(head.encode("latin-1", "replace"), self._secret):
            environ["PATH_INFO"] = "/" + rest
            environ[VIA_SECRET] = True
            # Rewritten whole, not searched for the secret: a client may have percent-encoded it.
            query = environ.get("QUERY_STRING")
            for name in _LOGGED_URIS:
                if name in environ:
                    environ[name] = f"/{MASK}/{rest}" + (f"?{query}" if query else "")
        return self.app(environ, start_response)
