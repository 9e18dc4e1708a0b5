"""The HTTP session to i'mport: requests' environment read once, and no transport retries.

:class:`~worker.adapters.iamport.client.IamportClient` sends every request through it.
The Celery glue builds it once per process (:mod:`worker.celery.runtime`), with an
adapter that refuses to start a request for a task the worker cancelled
(:class:`worker.celery.stopping.StoppableAdapter`); this module knows nothing of Celery.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies


def http_session(
    base_url: str,
    *,
    pool_size: int,
    env: Mapping[str, str],
    adapter: type[HTTPAdapter] = HTTPAdapter,
) -> requests.Session:
    """The HTTP session to i'mport, with what requests reads from the environment read once.

    Left to itself, requests looks up proxies (and ``no_proxy``), the CA bundle
    and ``~/.netrc`` on every request: about a tenth of a request's CPU here.
    Every request goes to one base URL, so the proxies and the bundle are
    resolved for it now, exactly as requests would (``REQUESTS_CA_BUNDLE``,
    then ``CURL_CA_BUNDLE``). ``.netrc`` is not read at all: its Basic auth
    would replace the bearer token.

    ``adapter`` is the transport adapter's class, mounted for both schemes.
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = get_environ_proxies(base_url)
    bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    # No transport-level retries: they would re-POST a receipt behind the
    # task's back. One pooled connection per worker thread.
    mounted = adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", mounted)
    session.mount("http://", mounted)
    return session
