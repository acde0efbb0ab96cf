"""HTTP sessions for the chain node and the IPFS node, with the environment read once.

A default ``requests.Session`` reads the environment on every request: every
``*_proxy`` variable (twice, lower and upper case), ``NO_PROXY`` and
``~/.netrc``. That cost about 1.5 ms of CPU per call here, more than a call to
a local node takes, and a worker makes several calls per task. A node session
settles the same things once, for its node's URL, when it is made: a proxy
set in the environment is still used (and ``NO_PROXY`` still honoured), as is
a CA bundle from ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` and a ``.netrc``
login; a change to them reaches sessions made afterwards.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests


def node_session(url: str, *, user_agent: str | None = None) -> requests.Session:
    """A session for requests to ``url``'s node, its proxies and credentials resolved now."""
    import requests
    from requests.utils import get_environ_proxies, get_netrc_auth

    session = requests.Session()
    session.proxies.update(get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    login = get_netrc_auth(url)
    if login:
        session.auth = login
    session.trust_env = False  # settled above: do not read it all again on every request
    if user_agent:
        session.headers["User-Agent"] = user_agent
    return session
