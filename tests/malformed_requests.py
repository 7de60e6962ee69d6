"""Malformed requests a model server meets on a network, each with the 4xx it must answer and a
word its JSON reason must contain. The server under test serves ``churn`` v1 with entity
``customer_id`` and an online feature lookup; ids 0 to 399 exist there."""

from __future__ import annotations

import json

GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}
NUMERIC = ("tenure_months", "monthly_charges", "support_calls")
CATEGORICAL = ("contract", "region")
FEATURES = (*NUMERIC, *CATEGORICAL)


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    headers = {"Host": "x", "Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n").encode() + body


def rows(*items: dict) -> bytes:
    return json.dumps({"rows": list(items)}).encode()


def tensors(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def good_tensors(n: int = 1, **override: dict) -> list[dict]:
    out = []
    for name in FEATURES:
        numeric = name in NUMERIC
        tensor = {"name": name, "shape": [n], "datatype": "FP32" if numeric else "BYTES",
                  "data": [GOOD[name]] * n}
        out.append({**tensor, **override.get(name, {})})
    return out


def predict(body: bytes, **headers: str) -> bytes:
    return request("POST", "/predict", body, headers)


def infer(body: bytes, path: str = "/v2/models/churn/infer") -> bytes:
    return request("POST", path, body)


def _issue_cases() -> list[tuple[str, bytes, int, str]]:
    """The six inputs that answered 500 before, and the digit that was taken for a version."""
    cases = [
        ("400-digit entity id", predict(b'{"rows": [{"customer_id": 1' + b"0" * 400 + b"}]}"), 422, "64-bit"),
        ("OIP datatype as a list", infer(tensors(*good_tensors(tenure_months={"datatype": ["FP32"]}))), 422,
         "datatype must be a string"),
    ]
    for label, version in (("superscript two", "%C2%B2"), ("5000-digit", "1" * 5000),
                           ("Arabic-Indic one", "%D9%A1"), ("fullwidth one", "%EF%BC%91")):
        cases += [
            (f"{label} version, metadata", request("GET", f"/v2/models/churn/versions/{version}"), 404, "not served"),
            (f"{label} version, ready", request("GET", f"/v2/models/churn/versions/{version}/ready"), 404,
             "not served"),
            (f"{label} version, infer", infer(tensors(*good_tensors()), f"/v2/models/churn/versions/{version}/infer"),
             404, "not served"),
        ]
    return cases


def _header_cases() -> list[tuple[str, bytes, int, str]]:
    many = "".join(f"X-h{i}: 1\r\n" for i in range(101))
    ten_thousand = "".join(f"X-h{i}: 1\r\n" for i in range(10_000))
    return [
        ("101 headers", f"GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode(), 431, "more than 100"),
        ("10,000 headers", f"GET /health HTTP/1.1\r\nHost: x\r\n{ten_thousand}\r\n".encode(), 431, "headers"),
        ("one 1 MB header", request("GET", "/health", headers={"X-Big": "a" * (1 << 20)}), 431, "exceed"),
        ("40 KB of headers in 1 KB lines", request("GET", "/health", headers={f"X-{i}": "a" * 1000 for i in range(40)}),
         431, "exceed"),
        ("one 1 MB header on /predict", predict(rows(GOOD), **{"X-Big": "a" * (1 << 20)}), 431, "exceed"),
        ("9 KB URL", request("GET", "/health?" + "a" * 9000), 414, "URL"),
        ("9 KB path on /predict", request("POST", "/predict/" + "a" * 9000, rows(GOOD)), 414, "URL"),
    ]


ROUTES = ["/predict", "/health", "/metadata", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready",
          "/v2/models/churn", "/v2/models/churn/ready", "/v2/models/churn/infer", "/v2/models/churn/versions/1",
          "/v2/models/churn/versions/1/ready", "/v2/models/churn/versions/1/infer"]


def _method_cases() -> list[tuple[str, bytes, int, str]]:
    return [(f"{method} {route}", request(method, route), 405, f"method {method}")
            for route in ROUTES for method in ("PUT", "DELETE", "PATCH")]


def _field_cases() -> list[tuple[str, bytes, int, str]]:
    cases = []
    for name in NUMERIC:
        for label, value in (("a word", "twelve"), ("null", None), ("true", True), ("a list", []), ("an object", {}),
                             ("1e39", 1e39), ("-1e39", -1e39), ("text 1e39", "1e39"), ("text nan", "nan")):
            cases.append((f"{name} is {label}", predict(rows({**GOOD, name: value})), 422, f"rows[0].{name}"))
    for name in CATEGORICAL:
        for label, value in (("null", None), ("a list", []), ("an object", {}), ("300 characters", "x" * 300)):
            cases.append((f"{name} is {label}", predict(rows({**GOOD, name: value})), 422, f"rows[0].{name}"))
    cases.append(("second row bad", predict(rows(GOOD, {**GOOD, "region": [1]})), 422, "rows[1].region"))
    return cases


def _entity_cases() -> list[tuple[str, bytes, int, str]]:
    return [
        (f"entity id is {label}", predict(rows({"customer_id": value})), status, word)
        for label, value, status, word in (
            ("true", True, 422, "customer_id"), ("a float", 1.5, 422, "customer_id"),
            ("a list", [1], 422, "customer_id"), ("null", None, 422, "customer_id"),
            ("empty", "", 422, "customer_id"), ("300 characters", "c" * 300, 422, "customer_id"),
            ("2**63", 2 ** 63, 422, "64-bit"), ("-2**63 - 1", -(2 ** 63) - 1, 422, "64-bit"),
            ("unknown", 987_654, 404, "no online features"), ("unknown string", "nobody", 404, "no online features"),
        )
    ]


def _content_type_cases() -> list[tuple[str, bytes, int, str]]:
    return [
        ("text/plain", predict(rows(GOOD), **{"Content-Type": "text/plain"}), 415, "Content-Type"),
        ("application/xml", predict(b"<rows/>", **{"Content-Type": "application/xml"}), 415, "Content-Type"),
        ("multipart", predict(rows(GOOD), **{"Content-Type": "multipart/form-data; boundary=x"}), 415,
         "Content-Type"),
        ("no Content-Type on /predict", predict(rows(GOOD)).replace(b"Content-Type: application/json\r\n", b""),
         415, "Content-Type"),
    ]


def _json_cases() -> list[tuple[str, bytes, int, str]]:
    bodies = [
        ("empty body", b"", 400, "not valid JSON"), ("null", b"null", 422, "JSON object"),
        ("a number", b"1", 422, "JSON object"), ("a string", b'"rows"', 422, "JSON object"),
        ("rows null", b'{"rows": null}', 422, "non-empty list"), ("rows an object", b'{"rows": {}}', 422,
                                                                 "non-empty list"),
        ("rows a string", b'{"rows": "x"}', 422, "non-empty list"), ("row a number", b'{"rows": [1]}', 422,
                                                                   "rows[0] must be an object"),
        ("row a list", b'{"rows": [[]]}', 422, "rows[0] must be an object"),
        ("misspelt key", b'{"row": []}', 422, "JSON object"), ("empty object", b"{}", 422, "JSON object"),
        ("invalid UTF-8", b'{"rows": [{"region": "\xff\xfe"}]}', 400, "not valid JSON"),
        ("empty row", b'{"rows": [{}]}', 422, "missing"), ("Infinity", b'{"rows": [{"tenure_months": Infinity}]}',
                                                           400, "Infinity"),
        ("-Infinity", b'{"rows": [{"tenure_months": -Infinity}]}', 400, "Infinity"),
        ("trailing garbage", rows(GOOD) + b" x", 400, "not valid JSON"),
        ("truncated", rows(GOOD)[:-3], 400, "not valid JSON"),
        ("lone surrogate", json.dumps({"rows": [{**GOOD, "region": "\ud800"}]}).encode(), 422, "not valid Unicode"),
    ]
    return [(f"JSON: {label}", predict(body), status, word) for label, body, status, word in bodies]


def _oip_cases() -> list[tuple[str, bytes, int, str]]:
    bodies = [
        ("inputs not a list", json.dumps({"inputs": {}}).encode(), "inputs"),
        ("no inputs", json.dumps({"inputs": []}).encode(), "inputs"),
        ("tensor not an object", tensors(1), "inputs[0] must be an object"),
        ("shape missing", tensors(*good_tensors(region={"shape": None})), "shape"),
        ("negative shape", tensors(*good_tensors(region={"shape": [-1]})), "shape"),
        ("shape of strings", tensors(*good_tensors(region={"shape": ["1"]})), "shape"),
        ("shape does not fit", tensors(*good_tensors(region={"shape": [2]})), "does not fit"),
        ("shape [n, 2]", tensors(*good_tensors(region={"shape": [1, 2], "data": ["a", "b"]})), "[n, 1]"),
        ("data not a list", tensors(*good_tensors(region={"data": "north"})), "data must be a list"),
        ("numeric type on a category", tensors(*good_tensors(region={"datatype": "FP32"})), "BYTES is required"),
        ("BYTES on a number", tensors(*good_tensors(tenure_months={"datatype": "BYTES"})), "numeric type"),
        ("datatype missing", tensors(*good_tensors(region={"datatype": None})), "datatype"),
        ("datatype an object", tensors(*good_tensors(region={"datatype": {"t": 1}})), "datatype"),
        ("a feature missing", tensors(*good_tensors()[:-1]), "inputs lack region"),
        ("unequal lengths", tensors(*good_tensors()[:-1], {**good_tensors(2)[-1]}), "same number"),
        ("zero rows", tensors(*good_tensors(0)), "0 rows"),
        ("1001 rows", tensors(*good_tensors(1001)), "1001 rows"),
        ("name not a string", tensors(*good_tensors(region={"name": ["region"]})), "not an input"),
        ("a value of the wrong type", tensors(*good_tensors(region={"data": [[5]]})), "expected a category"),
    ]
    return [(f"OIP: {label}", infer(body), 422, word) for label, body, word in bodies]


def _protocol_cases() -> list[tuple[str, bytes, int, str]]:
    return [
        ("garbage request line", b"GARBAGE\r\n\r\n", 400, "malformed HTTP"),
        ("HTTP/9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed HTTP"),
        ("NUL in a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: a\x00b\r\n\r\n", 400, "malformed HTTP"),
        ("header without a colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400, "malformed HTTP"),
        ("bad chunk size", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "malformed HTTP"),
        ("Content-Length and chunked", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
         "malformed HTTP"),
        ("two Content-Lengths", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
                                b"\r\n{}", 400, "malformed HTTP"),
        ("superscript Content-Length", predict(b"{}", **{"Content-Length": "\u00b2"}), 400, ""),
    ]


def _route_cases() -> list[tuple[str, bytes, int, str]]:
    return [(f"route {path[:30]}", request("GET", path), 404, word) for path, word in (
        ("/v2/models/churn/versions/1/generate", "no route"), ("/predict/", "no route"),
        ("/v1/models/churn:predict", "no route"), ("/%00", "no route"), ("/../etc/passwd", "no route"),
        ("/v2/models/other", "no model 'other'"), ("/v2/models/other/ready", "no model 'other'"),
        ("/v2/models/churn/versions/0", "not served"), ("/v2/models/churn/versions/-1", "not served"),
        ("/v2/models/churn/versions/99", "not served"))]


def battery() -> list[tuple[str, bytes, int, str]]:
    return (_issue_cases() + _header_cases() + _method_cases() + _field_cases() + _entity_cases()
            + _content_type_cases() + _json_cases() + _oip_cases() + _protocol_cases() + _route_cases())
