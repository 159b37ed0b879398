#!/usr/bin/env python3
"""Checks a running Hoard admin API against its own description.

Usage: HOARD_ADMIN_TOKEN=TOKEN openapi_check.py http://HOST:PORT SCRATCH_DIR

1. /api/v1/openapi.json is a valid OpenAPI 3.1 document (openapi-spec-validator).
2. Every GET without path parameters, and every POST whose effect is harmless on a test cell, is
   called; the status must be one the description lists for that operation, and the body must
   validate against the schema given for that status, with no keys the schema does not name.
3. Requests the API must refuse (unknown names, unknown fields, out-of-range values, no token, a
   backup name that is a path) answer the documented error status with an ApiError body.

Prints one line per check; exits non-zero on the first mismatch.
"""

import copy
import json
import os
import sys
import urllib.error
import urllib.request

import jsonschema
from openapi_spec_validator import validate

BASE = sys.argv[1].rstrip("/")
SCRATCH = sys.argv[2]
TOKEN = os.environ.get("HOARD_ADMIN_TOKEN", "")

# POSTs that change the cell beyond a knob (or take long): called only by the refusal checks below.
NOT_CALLED = {"/api/v1/rebuild-index", "/api/v1/drain", "/api/v1/undrain",
              "/api/v1/rebalance/apply", "/api/v1/disks/{id}/declare-empty",
              "/api/v1/workers/cancel"}

# Bodies for the POSTs that need one.
BODIES = {
    "/api/v1/repair/throttle": {"concurrency": 4},
    "/api/v1/compaction/throttle": {"concurrency": 4},
    "/api/v1/scrub/throttle": {"interval_secs": 86400},
    "/api/v1/backup": {"name": "openapi-check"},
    "/api/v1/workers/pause": {"name": "repair"},
    "/api/v1/workers/resume": {"name": "repair"},
    "/api/v1/workers/throttle": {"name": "repair", "bytes_per_sec": 0},
}


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    token = TOKEN if token is None else token
    if token:
        headers["Authorization"] = "Bearer " + token
    req = urllib.request.Request(BASE + path, data=data, method=method.upper(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def closed(schemas):
    """The component schemas with every object closed to keys it does not name."""
    out = copy.deepcopy(schemas)

    def close(s):
        if isinstance(s, dict):
            if "properties" in s:
                s.setdefault("additionalProperties", False)
            for v in s.values():
                close(v)
        elif isinstance(s, list):
            for v in s:
                close(v)

    close(out)
    return out


def main():
    status, spec = call("get", "/api/v1/openapi.json")
    assert status == 200, f"openapi.json: HTTP {status}"
    validate(spec)
    print(f"ok  openapi.json is a valid OpenAPI {spec['openapi']} document "
          f"with {len(spec['paths'])} paths")
    components = {"schemas": closed(spec["components"]["schemas"])}

    def check(method, path, op, status, body, url=None):
        responses = op["responses"]
        where = f"{method.upper()} {url or path}"
        assert str(status) in responses, \
            f"{where}: answered {status}, which the description does not list ({sorted(responses)}): {body}"
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        try:
            jsonschema.Draft202012Validator({**schema, "components": components}).validate(body)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{where}: answer does not match its schema: {e.message} at "
                                 f"{list(e.absolute_path)}") from None
        print(f"ok  {where} -> {status} matches its schema")

    called = 0
    for path, item in sorted(spec["paths"].items()):
        for method, op in item.items():
            if method not in ("get", "post") or "{" in path:
                continue
            if method == "post" and path in NOT_CALLED:
                continue
            status, body = call(method, path, BODIES.get(path))
            assert status == 200 or method == "post", f"GET {path}: HTTP {status}: {body}"
            check(method, path, op, status, body)
            called += 1
    assert called >= 25, f"only {called} operations called"

    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    refusals = [
        ("post", "/api/v1/drain", {"disk": "no-such-disk"}, 404, "no-such-disk"),
        ("post", "/api/v1/drain", {}, 400, "disk"),
        ("post", "/api/v1/undrain", {"node": "no-such-node"}, 404, "no-such-node"),
        ("post", "/api/v1/repair/throttle", {"bytes_per_second": 1}, 400, "bytes_per_second"),
        ("post", "/api/v1/repair/throttle", {"concurrency": 0}, 400, "concurrency"),
        ("post", "/api/v1/scrub/throttle", {"bytes_per_sec": "fast"}, 400, "bytes_per_sec"),
        ("post", "/api/v1/compaction/throttle", {"threshold": 2}, 400, "threshold"),
        ("post", "/api/v1/rebalance/apply", {"tolerance": 500}, 400, "tolerance"),
        ("post", "/api/v1/backup", {}, 400, "name"),
        ("post", "/api/v1/backup", {"name": SCRATCH}, 400, "not a plain name"),
        ("post", "/api/v1/backup", {"name": ".."}, 400, "not a plain name"),
        ("post", "/api/v1/backup", {"name": "openapi-check"}, 409, "exists"),
        ("post", "/api/v1/disks/{id}/declare-empty", None, 404, "no-such-disk"),
        ("post", "/api/v1/workers/pause", {"name": "no-such-worker"}, 404, "no-such-worker"),
        ("post", "/api/v1/workers/cancel", {}, 400, "name"),
        ("post", "/api/v1/workers/throttle", {"name": "health"}, 400, "bytes_per_sec"),
        ("get", "/api/v1/rebalance/plan", "?tolerance=500", 400, "tolerance"),
        ("get", "/api/v1/rebalance/plan", "?tolerance=wide", 400, "tolerance"),
        ("get", "/api/v1/blocks/sample", "?after=zz", 400, "after"),
        ("get", "/api/v1/status", "", 401, "needs an admin token", ""),
        ("get", "/api/v1/blocks/sample", "?pct=100", 401, "not known", "hoardadm_" + "0" * 64),
        ("post", "/api/v1/drain", {"disk": "no-such-disk"}, 401, "needs an admin token", ""),
    ]
    for method, path, body, want, names, *token in refusals:
        url = path.replace("{id}", "no-such-disk")
        if method == "get":
            url, body = url + body, None
        status, answer = call(method, url, body, token[0] if token else None)
        assert status == want, f"{method.upper()} {url} {body}: HTTP {status} (wanted {want}): {answer}"
        assert isinstance(answer, dict) and names in answer.get("message", ""), \
            f"{method.upper()} {url}: the error does not name {names!r}: {answer}"
        check(method, path, ops[(method, path)], status, answer, url)
    print(f"all checks passed ({called} operations called, {len(refusals)} refusals)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}")
        sys.exit(1)
