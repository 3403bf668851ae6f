"""schemathesis hooks of the contract run (scripts/contract loads them with SCHEMATHESIS_HOOKS).

- Identity per operation: every call carries the bearer token of one user (CONTRACT_TOKEN) who
  is the admin of an organization with every frontend enabled and an operator (the
  account-wide admin role). What differs per operation is `X-Frontend-Source`:
  an operation that documents the header gets what schemathesis generated from its schema
  (the enum of its frontends); any other gets the frontend of its tag (`FRONTEND_OF_TAG`),
  or none for tags whose routes belong to no frontend.
- Pusher HTTP API (`/apps/{app_id}/...`): the app id, key, timestamp, body MD5 and signature
  are replaced by valid ones (the secret is CONTRACT_PUSHER_SECRET), so that the body and the
  channel parameters are fuzzed past the signature check.
- Login and refresh: every other generated body (that is an object) gets the run user's
  e-mail and password (CONTRACT_EMAIL, CONTRACT_PASSWORD), or the current refresh token of a
  session kept for this (CONTRACT_REFRESH_TOKEN, then each rotated one), so that these two are
  exercised past their credential checks too. A refresh token is handed to one call at a time:
  a reused one revokes its session.
- Closing one's account (`DELETE /api/v1/users/me`): every other call is made as a user
  signed up for it alone, with that user's password, since closing the run user's account
  would end the run's session.
- Every answer is recorded as `METHOD path status` (the documented path template), one line
  each, to the file named by CONTRACT_CALLS; scripts/contract counts from it the operations
  exercised past authorization (at least one answer neither 401 nor 403).
"""

import hashlib
import hmac
import json
import os
import threading
import time
import urllib.request
import uuid

import schemathesis
from schemathesis.core import NotSet

# The frontend of each tag's routes (`X-Frontend-Source`), for operations that do not document
# the header themselves. Tags not listed (identity, history, analysis, legacy, live,
# operations) are not behind a frontend.
FRONTEND_OF_TAG = {
    "citypulse": "citypulse",
    "ai": "flowmind",
    "messaging": "fluxstudio",
    "fluxstudio": "fluxstudio",
    "swarm": "quantum",
    "agents": "toolbox",
    "files": "fluxstudio",
}

FRONTEND_HEADER = "X-Frontend-Source"
PUSHER_PREFIX = "/apps/{app_id}"

_calls_path = os.environ.get("CONTRACT_CALLS")
_lock = threading.Lock()
_turns: dict[str, int] = {}
_refresh_token = os.environ.get("CONTRACT_REFRESH_TOKEN")
_refresh_sent: set[str] = set()  # ids of the cases that carry the refresh token


def _my_turn(name: str) -> bool:
    """Every other call of `name`."""
    with _lock:
        _turns[name] = _turns.get(name, 0) + 1
        return _turns[name] % 2 == 1


def _credentials(case) -> None:
    global _refresh_token
    if not isinstance(case.body, dict):
        return
    path = case.operation.path
    if path == "/api/v1/auth/login" and os.environ.get("CONTRACT_EMAIL") and _my_turn(path):
        body = {**case.body, "email": os.environ["CONTRACT_EMAIL"], "password": os.environ["CONTRACT_PASSWORD"]}
        body.pop("organization_id", None)
        case.body = body
    elif path == "/api/v1/auth/refresh" and _my_turn(path):
        with _lock:
            token, _refresh_token = _refresh_token, None
        if token:
            case.body = {**case.body, "refresh_token": token}
            with _lock:
                _refresh_sent.add(case.id)


def _documents_frontend_header(operation) -> bool:
    for parameter in operation.definition.raw.get("parameters", []):
        if parameter.get("in") == "header" and parameter.get("name", "").lower() == "x-frontend-source":
            return True
    return False


def _frontend_for(operation) -> str | None:
    for tag in operation.tags or []:
        if tag in FRONTEND_OF_TAG:
            return FRONTEND_OF_TAG[tag]
    return None


def _sign_pusher(case, kwargs) -> None:
    """Valid Pusher HTTP API credentials: `auth_*` and `body_md5` query parameters."""
    app_id = os.environ.get("CONTRACT_PUSHER_APP_ID")
    key = os.environ.get("CONTRACT_PUSHER_KEY")
    secret = os.environ.get("CONTRACT_PUSHER_SECRET")
    if not (app_id and key and secret):
        return
    case.path_parameters = {**(case.path_parameters or {}), "app_id": app_id}
    query = {
        k: v
        for k, v in (case.query or {}).items()
        if k not in ("auth_key", "auth_timestamp", "auth_version", "body_md5", "auth_signature")
    }
    query.update(auth_key=key, auth_timestamp=str(int(time.time())), auth_version="1.0")
    if case.method.upper() == "POST" and not isinstance(case.body, NotSet):
        if "json" not in (case.media_type or ""):
            return
        # The exact bytes sent, so that `body_md5` matches them. A body that is no JSON
        # (negative mode) goes out unsigned.
        try:
            body = json.dumps(case.body, allow_nan=False).encode()
        except (TypeError, ValueError):
            return
        kwargs["data"] = body
        query["body_md5"] = hashlib.md5(body).hexdigest()
    # Pusher signs `METHOD\npath\nquery`: query keys lowercased and sorted, values as they
    # are (not URL-encoded), joined with `&`, `auth_signature` left out.
    pairs = "&".join(
        f"{k.lower()}={_plain(v)}" for k, v in sorted(query.items(), key=lambda kv: kv[0].lower())
    )
    to_sign = f"{case.method.upper()}\n{case.formatted_path}\n{pairs}"
    query["auth_signature"] = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    case.query = query


def _plain(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _throwaway_user(case) -> None:
    """Closes the account of a user signed up for this call alone."""
    if not isinstance(case.body, dict) or not _my_turn("close"):
        return
    password = "Contract-Throwaway-Pass-9"
    signup = {"email": f"contract-{uuid.uuid4().hex}@example.org", "password": password, "display_name": "Throwaway"}
    request = urllib.request.Request(
        os.environ["CONTRACT_BASE"] + "/api/v1/auth/signup",
        method="POST",
        data=json.dumps(signup).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.load(response)["access_token"]
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    case.body = {**case.body, "password": password}


@schemathesis.hook
def before_call(context, case, kwargs):
    operation = case.operation
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {os.environ['CONTRACT_TOKEN']}"}
    if operation.method.upper() == "DELETE" and operation.path == "/api/v1/users/me":
        _throwaway_user(case)
    if not _documents_frontend_header(operation):
        frontend = _frontend_for(operation)
        if frontend is not None:
            case.headers = {**(case.headers or {}), FRONTEND_HEADER: frontend}
    if operation.path.startswith(PUSHER_PREFIX + "/"):
        _sign_pusher(case, kwargs)
    if operation.path in ("/api/v1/auth/login", "/api/v1/auth/refresh"):
        _credentials(case)


@schemathesis.hook
def after_call(context, case, response):
    global _refresh_token
    with _lock:
        sent = case.id in _refresh_sent
        _refresh_sent.discard(case.id)
    if sent and response.status_code == 200:
        try:
            rotated = response.json().get("refresh_token")
        except Exception:
            rotated = None
        with _lock:
            _refresh_token = rotated
    if not _calls_path:
        return
    # The method sent: the coverage phase also sends methods a path does not take.
    line = f"{response.request.method.upper()} {case.operation.path} {response.status_code}\n"
    with _lock:
        with open(_calls_path, "a", encoding="utf-8") as out:
            out.write(line)


@schemathesis.serializer("application/offset+octet-stream")
def tus_chunk(ctx, value):
    """A tus PATCH body: the upload's next bytes, sent as they are."""
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf8")}
    return {"data": json.dumps(value).encode("utf8")}
