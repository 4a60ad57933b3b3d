"""Test helpers for the server (ServerThread is re-exported from the package so benchmarks use the same one)."""
import json
import urllib.error
import urllib.request

from args_engine.integrations.server_thread import ServerThread, free_port  # noqa: F401


def post(url: str, path: str, body, headers: dict | None = None, content_type: str = "application/json",
         raw: bytes | None = None) -> tuple[int, dict, dict]:
    """POST without a client library in between -> (status, the JSON body as sent, headers in lower case)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    return _send(req)


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    return _send(urllib.request.Request(url + path, headers=headers or {}))


def _send(req) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}
