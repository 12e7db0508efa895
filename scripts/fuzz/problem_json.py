"""Schemathesis check for Sagaflow: every 4xx answer carries a problem+json body."""

import json

import schemathesis


def _content_type(headers):
    value = headers.get("content-type") or headers.get("Content-Type") or ""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value.split(";")[0].strip().lower()


@schemathesis.check
def problem_json_on_4xx(ctx, response, case):
    if not 400 <= response.status_code < 500:
        return None
    content_type = _content_type(response.headers)
    if content_type != "application/problem+json":
        raise AssertionError(f"{response.status_code} without problem+json (content-type: {content_type!r})")
    body = json.loads(response.content or b"null")
    if not isinstance(body, dict) or body.get("status") != response.status_code or not body.get("title"):
        raise AssertionError(f"{response.status_code} with a malformed problem body: {body!r}")
    return None
