"""Drives volsnap's CloudStack API through the `cs` Python API (PyPI cs), as an operator's script would.

Reads one request as JSON on stdin: {endpoint, key, secret, command, params, fetch_result, method, fetch_list}
and prints {"ok": true, "result": ...} or {"ok": false, "status": <http>, "error": <CloudStack error>}.
"""
import json
import sys

from cs import CloudStack, CloudStackApiException, CloudStackException

req = json.load(sys.stdin)
client = CloudStack(
    endpoint=req["endpoint"],
    key=req["key"],
    secret=req["secret"],
    method=req.get("method", "get"),
    poll_interval=0.2,
    job_timeout=120,
    timeout=60,
)
try:
    kwargs = dict(req.get("params", {}))
    result = getattr(client, req["command"])(
        fetch_result=req.get("fetch_result", False),
        fetch_list=req.get("fetch_list", False),
        **kwargs,
    )
    print(json.dumps({"ok": True, "result": result}))
except CloudStackApiException as e:
    status = e.response.status_code if e.response is not None else None
    print(json.dumps({"ok": False, "status": status, "message": str(e.args[0]), "error": e.error}))
except CloudStackException as e:
    status = e.response.status_code if e.response is not None else None
    print(json.dumps({"ok": False, "status": status, "message": " ".join(str(a) for a in e.args), "error": None}))
