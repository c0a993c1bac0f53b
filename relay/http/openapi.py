"""The HTTP API described as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Written as prose for the people who read it, with every limit and enum read from where the
code defines it (relay.limits, the models), so the description cannot drift from what the
routes enforce. tests/test_subscribers_api.py fails when a route of `create_app` is missing
here, or a limit of relay.limits is not stated.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from relay.fanout.resume import CURSOR_EXPIRED, SNAPSHOT_LIMIT, TOO_FAR_BEHIND, UNKNOWN_CURSOR
from relay.fanout.wire import JOB_UPDATED, RESET
from relay.limits import (
    API_BODY_BYTES,
    DELIVERIES_PAGE_DEFAULT,
    DELIVERIES_PAGE_MAX,
    JOBS_PAGE_DEFAULT,
    JOBS_PAGE_MAX,
    METADATA_BYTES,
    OFFSET_MAX,
    RESERVED_TOPICS,
    SESSION_TTL,
    TEXT_LENGTH,
    TOKEN_TTL,
    TOKEN_TTL_MAX,
    TOPICS_PER_JOB,
    TOPICS_PER_SUBSCRIPTION,
    TOPICS_PER_TOKEN,
    TRACKED_TOKEN_TTL,
    URL_LENGTH,
    URL_PATTERN,
    WAIT_DEFAULT,
    WAIT_MAX,
)
from relay.models import Schema, Source, State
from relay.outbound.health import OPS_EVENTS
from relay.polling.pollers.base import RECOVERED, UNAUTHORIZED
from relay.store.outbox import (
    REPLAY_MAX,
    REPLAY_SCAN,
    DeliveryStatus,
    EventKind,
    SubscriptionStatus,
)

JSON = dict[str, Any]

# What relay.signing.signing_key accepts: `whsec_` (optional, as the Standard Webhooks
# libraries read it) and the base64 of 24 to 64 bytes, its padding optional.
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = (f"^(whsec_)?(({_B64}{{4}}){{8,20}}({_B64}{{2}}(==)?|{_B64}{{3}}=?)?"
                  f"|({_B64}{{4}}){{21}}({_B64}{{2}}(==)?)?)$")


def _enum(kind: type[StrEnum]) -> JSON:
    return {"type": "string", "enum": [member.value for member in kind]}

def document(version: str = "0.1.0") -> JSON:
    """The whole document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay",
            "version": version,
            "description": "Provider webhooks and polls in; one normalised job model out "
                           "over server-sent events and HTTP.",
        },
        "paths": {**_operations_paths(), **_jobs_paths(), **_stream_paths(), **_hook_paths(),
                  **_subscription_paths(), **_provider_paths()},
        "components": {"schemas": _schemas(), "securitySchemes": _security_schemes()},
        "security": [{"apiKey": []}],
    }


# -- building blocks ------------------------------------------------------------------------

def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSON, description: str) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> JSON:
    return _json(_ref("Error"), description)


def _param(name: str, where: str, schema: JSON, description: str,
           required: bool = False) -> JSON:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema, "description": description}


def _query(name: str, schema: JSON, description: str) -> JSON:
    return _param(name, "query", schema, description)


_STR: JSON = {"type": "string"}
_TEXT: JSON = {"type": "string", "minLength": 1, "maxLength": TEXT_LENGTH}
# str.strip() takes the separators U+001C to U+001F and U+0085 as white space too.
_NAME: JSON = {**_TEXT, "pattern": r"[^\s\u001c-\u001f\u0085]",
               "description": "Not only white space."}
_JOB_ID = _param("id", "path", _STR, "The relay's job id.")
_UNAUTHORIZED = _error("No valid API key (`Authorization: Bearer <key>`), or a token that is "
                       "altered or expired.")
_NOT_FOUND = _error("No such job.")
_BAD_REQUEST = _error("A parameter is invalid; `details.field` names it.")
_OPEN: list[JSON] = []  # an operation that needs no API key


_API_BODY = f"A JSON object of at most {API_BODY_BYTES} bytes."


def _op(summary: str, responses: JSON, *, tag: str, params: list[JSON] | None = None,
        body: JSON | None = None, security: list[JSON] | None = None,
        body_description: str = _API_BODY) -> JSON:
    operation: JSON = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "description": body_description,
                                    "content": {"application/json": {"schema": body}}}
    if security is not None:
        operation["security"] = security
    return operation


# -- paths ----------------------------------------------------------------------------------

def _operations_paths() -> JSON:
    text = {"text/plain": {"schema": _STR}}
    return {
        "/": {"get": _op("The console: jobs live over SSE, their history and cancel, the "
                         "providers' health, subscriptions; it calls the API like any client "
                         "(with API keys, it asks for one and holds a session token).", {
            "200": {"description": "An HTML page.", "content": {"text/html": {"schema": _STR}}},
        }, tag="operations", security=_OPEN)},
        "/favicon.ico": {"get": _op("The console's icon.", {
            "200": {"description": "An SVG image.",
                    "content": {"image/svg+xml": {"schema": _STR}}},
        }, tag="operations", security=_OPEN)},
        "/static/{path}": {"get": _op("The dashboard's assets.", {
            "200": {"description": "The file."}, "404": {"description": "No such file."},
        }, tag="operations", params=[_param("path", "path", _STR, "The asset's file name.")],
            security=_OPEN)},
        "/healthz": {"get": _op("Alive.", {
            "200": _json({"type": "object", "properties": {"status": {"const": "ok"}}}, "Alive."),
        }, tag="operations", security=_OPEN)},
        "/readyz": {"get": _op("Ready: the store is reachable.", {
            "200": _json({"type": "object", "properties": {"status": {"const": "ready"}}},
                         "Ready."),
            "503": _error("The store is unreachable."),
        }, tag="operations", security=_OPEN)},
        "/metrics": {"get": _op("Prometheus metrics; every name starts with `relay_`.", {
            "200": {"description": "Prometheus text format 0.0.4.", "content": text},
        }, tag="operations", security=_OPEN)},
        "/openapi.json": {"get": _op("This document.", {
            "200": _json({"type": "object"}, "The OpenAPI 3.1 document."),
        }, tag="operations", security=_OPEN)},
        "/docs": {"get": _op("This document as a readable reference.", {
            "200": {"description": "An HTML page that renders `/openapi.json`.",
                    "content": {"text/html": {"schema": _STR}}},
        }, tag="operations", security=_OPEN)},
        "/client.js": {"get": _op("The browser client: `subscribe(url, {onJob, onReset, "
                                  "onError, onOpen, token})`, an ES module with no dependencies.", {
            "200": {"description": "JavaScript, importable from any origin.",
                    "content": {"text/javascript": {"schema": _STR}}},
        }, tag="operations", security=_OPEN)},
    }


def _jobs_paths() -> JSON:
    return {
        "/v1/jobs": {
            "post": _op("Start tracking a provider's job.", {
                "201": _json(_ref("Tracked"), "Now tracked."),
                "200": _json(_ref("Tracked"), "Already tracked: the same job."),
                "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
                "404": _error("No provider of that name is configured."),
                "422": _error("A field is invalid; `details.field` names it."),
            }, tag="jobs", body=_ref("TrackRequest")),
            "get": _op("Jobs, newest first, filtered and paginated.", {
                "200": _json(_ref("JobList"), "A page of jobs."),
                "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
            }, tag="jobs", params=_list_params()),
        },
        "/v1/jobs/{id}": {"get": _op("A job; with `wait=true`, held until it is terminal.", {
            "200": _json(_ref("Job"), "The job (at the timeout, as it is then)."),
            "400": _BAD_REQUEST, "401": _UNAUTHORIZED, "404": _NOT_FOUND,
        }, tag="jobs", params=[
            _JOB_ID,
            _query("wait", {"type": "boolean", "default": False},
                   "Hold the request until the job is terminal or the timeout passes."),
            _query("timeout", {"type": "number", "minimum": 0, "maximum": WAIT_MAX,
                               "default": WAIT_DEFAULT},
                   "Seconds to hold a `wait=true` request."),
        ])},
        "/v1/jobs/{id}/history": {"get": _op("Every stored change of a job, oldest first.", {
            "200": _json({"type": "object", "required": ["events"], "properties": {
                "events": {"type": "array", "items": _ref("Event")}}}, "The job's events."),
            "401": _UNAUTHORIZED, "404": _NOT_FOUND,
        }, tag="jobs", params=[_JOB_ID])},
        "/v1/jobs/{id}/cancel": {"post": _op("Cancel a job at its provider (`jobstatus`).", {
            "200": _json(_ref("Job"), "Canceled."),
            "401": _UNAUTHORIZED, "404": _NOT_FOUND,
            "409": _error("`cancel_not_supported` for schemas without cancel; "
                          "`already_terminal` for a finished job."),
            "502": _error("The provider could not be reached or refused (`provider_error`)."),
        }, tag="jobs", params=[_JOB_ID])},
    }


def _list_params() -> list[JSON]:
    states = _enum(State)
    return [
        _query("provider", _STR, "Only this provider's jobs."),
        _query("state", states, "Only jobs in this state."),
        _query("topic", _STR, "Only jobs with this topic."),
        _query("external_id", _STR, "Only jobs the provider knows by this id."),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": JOBS_PAGE_MAX,
                         "default": JOBS_PAGE_DEFAULT}, "Page size."),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX,
                          "default": 0}, "Jobs to skip."),
    ]


def _stream_paths() -> JSON:
    token = _query("token", _STR, "A subscribe token (what a browser EventSource can send); "
                                  "without one, the API key is required.")
    last_id = _param("Last-Event-ID", "header", _STR,
                     "Resume: exactly the events after this cursor, instead of current state. "
                     "A cursor the relay cannot place is never an error: the stream starts "
                     "with `event: relay.reset` instead.")
    stream = {"description": "An event stream: `retry:`, then `id: <cursor>`, "
                             "`event: job.updated`, `data: <Job>` per event, and heartbeat "
                             "comments while idle. When a `Last-Event-ID` cannot be resumed "
                             "exactly, it starts with `event: relay.reset` and `data: "
                             "{\"reason\": \"unknown_cursor\" | \"cursor_expired\" | "
                             "\"too_far_behind\"}` (no `id:`), then the current state.",
              "content": {"text/event-stream": {"schema": _ref("StreamEvent")}}}
    forbidden = _error("The token does not grant this job or topic.")
    token_auth: list[JSON] = [{"apiKey": []}, {"subscribeToken": []}]
    return {
        "/v1/jobs/{id}/events": {"get": _op(
            "One job's events: its current state, then live; ends after the terminal event.", {
                "200": stream,
                "204": {"description": "Reconnected after the terminal event: stop."},
                "401": _UNAUTHORIZED, "403": forbidden, "404": _NOT_FOUND,
            }, tag="events", params=[_JOB_ID, token, last_id], security=token_auth)},
        "/v1/events": {"get": _op(
            "Many jobs' events: the current state of each (the newest "
            f"{SNAPSHOT_LIMIT}), then live.", {
                "200": stream,
                "400": _error("No topic or job named, or too many."),
                "401": _UNAUTHORIZED, "403": forbidden,
            }, tag="events", params=[_followed(), token, last_id], security=token_auth)},
        "/v1/tokens": {"post": _op("A subscribe token granting only the jobs and topics named.", {
            "201": _json(_ref("Token"), "The token."),
            "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
        }, tag="events", body=_ref("TokenRequest"))},
        "/v1/sessions": {"post": _op(
            "An API key exchanged for a session token: sent as `Authorization: Bearer "
            "<token>`, it stands in for the key on every call for "
            f"{SESSION_TTL} s, and only while that key is still configured. Calling again with "
            "the session token renews it. The console keeps this instead of the key.", {
                "201": _json(_ref("Token"), "The session token."),
                "401": _UNAUTHORIZED,
                "409": _error("No API keys are configured (`no_api_keys`): calls need no "
                              "session."),
            }, tag="events")},
    }


def _followed() -> JSON:
    """`?topic=…&job=…` of `GET /v1/events`: one form-exploded object, because the two
    parameters are optional only as long as the other is given."""
    def named(name: str) -> JSON:
        return {"required": [name], "properties": {name: {"minItems": 1}}}

    strings = {"type": "array", "items": _TEXT, "maxItems": TOPICS_PER_TOKEN}
    return {"name": "follow", "in": "query", "required": True, "style": "form", "explode": True,
            "description": "What to follow, as `topic=` and `job=` query parameters: at least "
                           "one of them, each repeatable.",
            "schema": {"type": "object", "anyOf": [named("topic"), named("job")], "properties": {
                "topic": {**strings, "description": "Topics to follow: `job:<id>`, "
                          "`provider:<name>`, or any topic given when tracking."},
                "job": {**strings, "description": "Job ids to follow; the same as "
                        "`topic=job:<id>`."}}}}


def _hook_paths() -> JSON:
    provider = _param("provider", "path", _STR, "The provider's name in the configuration.")
    responses = {
        "202": _json(_ref("Accepted"), "Stored durably."),
        "200": _json(_ref("Accepted"), "A repeat: `duplicate` is true and nothing changed. A "
                     "delivery whose signature (or Standard Webhooks `webhook-id`) was accepted "
                     "within 7 days is a repeat, even when the job has changed since."),
        "400": _error("The body is not JSON (`invalid_json`)."),
        "401": _error("The signature or path token does not prove the delivery "
                      "(`invalid_signature`): a missing or stale signature is refused before "
                      "the body is read; a path token proves deliveries for its own job only."),
        "404": _error("No provider of that name (`unknown_provider`)."),
        "413": _error("The body is over the cap (`payload_too_large`)."),
        "422": _error("No job id or no status (`invalid_payload`)."),
    }
    body = {"type": "object", "description": "The provider schema's status object."}
    hook_body = "The provider's JSON, at most `server.max_body` bytes (1 MiB by default)."
    signed = _op("A provider's webhook, proven by a signature header (Sync-Signature, "
                 "X-Signature-Primary or Standard Webhooks).", responses, tag="webhooks",
                 params=[provider], body=body, security=_OPEN, body_description=hook_body)
    tokened = _op("A provider's webhook, proven by the signed path token of the job's "
                  "`webhook_url`.", responses, tag="webhooks",
                  params=[provider, _param("token", "path", _STR, "The relay-signed token.")],
                  body=body, security=_OPEN, body_description=hook_body)
    return {"/hooks/{provider}": {"post": signed}, "/hooks/{provider}/{token}": {"post": tokened}}


def _subscription_paths() -> JSON:
    sub_id = _param("id", "path", _STR, "The subscription's id.")
    no_sub = _error("No such subscription.")
    statuses = _enum(DeliveryStatus)
    return {
        "/v1/subscriptions": {
            "post": _op("Subscribe a downstream consumer: every update of the jobs its topics "
                        "select is posted to it, signed the Standard Webhooks way.", {
                "201": _json(_ref("CreatedSubscription"),
                             "Subscribed. The only answer that shows the secret."),
                "400": _BAD_REQUEST, "401": _UNAUTHORIZED,
                "422": _error("A field is invalid (`invalid_request`, `details.field`); the URL "
                              "is or resolves to a loopback, private, link-local or metadata "
                              "address (`forbidden_target`) or does not resolve "
                              "(`unresolvable_target`)."),
            }, tag="subscriptions", body=_ref("SubscriptionRequest")),
            "get": _op("Every subscription, oldest first (never a secret).", {
                "200": _json(_object(["subscriptions"], {"subscriptions": {
                    "type": "array", "items": _ref("Subscription")}}), "The subscriptions."),
                "401": _UNAUTHORIZED,
            }, tag="subscriptions"),
        },
        "/v1/subscriptions/{id}": {
            "get": _op("One subscription.", {
                "200": _json(_ref("Subscription"), "The subscription."),
                "401": _UNAUTHORIZED, "404": no_sub,
            }, tag="subscriptions", params=[sub_id]),
            "delete": _op("Unsubscribe; its pending deliveries are dropped. A subscription "
                          "from the configuration is never deleted by the relay (instances of "
                          "a rolling deploy may declare different ones): delete here the ones "
                          "no configuration declares any more.", {
                "204": {"description": "Unsubscribed."},
                "401": _UNAUTHORIZED, "404": no_sub,
                "409": _error("The configuration of the instance that answers declares it "
                              "(`config_subscription`): remove it there first."),
            }, tag="subscriptions", params=[sub_id]),
        },
        "/v1/subscriptions/{id}/enable": {"post": _op(
            "Make a `failing` or `disabled` subscription `active` again: it is sent to at full "
            "width, and new events reach it; its failed deliveries stay failed (replay them).", {
                "200": _json(_ref("Subscription"), "Active."),
                "401": _UNAUTHORIZED, "404": no_sub,
            }, tag="subscriptions", params=[sub_id])},
        "/v1/subscriptions/{id}/replay": {"post": _op(
            "Send again what the subscription was sent since a time: per job, its newest "
            "delivery made since then (with `only_failed`, only where that one failed), as a "
            "new delivery of the same event (the same `webhook-id`), started in event order. "
            "A job is never taken back in time: one with a delivery still pending is left to "
            f"it. At most {REPLAY_MAX} jobs (the most recent) and {REPLAY_SCAN} deliveries "
            "looked at, newest first; past either, `truncated` is true and the older ones are "
            "not replayed (with `only_failed`, the same call again goes on with them). Events "
            "that came while the subscription was disabled were never addressed to it and are "
            "not replayed.", {
                "202": _json(_ref("Replayed"), "Queued."),
                "400": _error("The body is not JSON (`invalid_json`)."),
                "401": _UNAUTHORIZED, "404": no_sub,
                "409": _error("The subscription is disabled (`subscription_disabled`): enable "
                              "it first."),
                "413": _error("The body is over the cap (`payload_too_large`)."),
                "422": _error("`since` or `only_failed` is invalid (`invalid_request`, "
                              "`details.field`)."),
            }, tag="subscriptions", params=[sub_id], body=_ref("ReplayRequest"))},
        "/v1/subscriptions/{id}/deliveries": {"get": _op(
            "The subscription's deliveries, newest first, each with its attempts.", {
                "200": _json(_object(["deliveries"], {"deliveries": {
                    "type": "array", "items": _ref("Delivery")}}), "The deliveries."),
                "400": _BAD_REQUEST, "401": _UNAUTHORIZED, "404": no_sub,
            }, tag="subscriptions", params=[
                sub_id, _query("status", statuses, "Only deliveries in this status."),
                _query("limit", {"type": "integer", "minimum": 1,
                                 "maximum": DELIVERIES_PAGE_MAX,
                                 "default": DELIVERIES_PAGE_DEFAULT}, "Page size."),
            ])},
        "/v1/deliveries/{id}/retry": {"post": _op(
            "Send a failed delivery again, now, with a fresh retry schedule.", {
                "200": _json(_ref("Delivery"), "Pending again."),
                "401": _UNAUTHORIZED, "404": _error("No such delivery."),
                "409": _error("Not failed (`not_failed`); a newer update of the job was "
                              "delivered or is on its way (`superseded`); the subscription is "
                              "disabled (`subscription_disabled`): enable it first."),
            }, tag="subscriptions",
            params=[_param("id", "path", _STR, "The delivery's id.")])},
    }


def _provider_paths() -> JSON:
    counts = {"type": "object", "description": "Jobs in each state.",
              "properties": {state.value: {"type": "integer"} for state in State}}
    rate = _nullable({"type": "number", "minimum": 0})
    health = {"type": "object", "required": ["polling"], "properties": {
        "polling": {"type": "string",
                    "enum": ["ok", "throttled", "unauthorized", "payment_required", "off"],
                    "description": "`throttled`: paused by a 429 or 503 until `until`; "
                                   "`unauthorized`, `payment_required`: the account was refused "
                                   "(401, 403; 402) since `since`, and is probed; `off`: no "
                                   "`base_url`, so not polled."},
        "jobs": {"type": "integer", "description": "Unfinished jobs this instance polls."},
        "until": {"type": "string", "format": "date-time"},
        "since": {"type": "string", "format": "date-time"},
        "status": {"type": "integer"}, "error": _nullable(_STR), "message": _STR,
        "reason": _STR}}
    provider = _object(["name", "schema", "polled", "health", "jobs", "per_minute"], {
        "name": _STR, "schema": _enum(Schema), "polled": {"type": "boolean"},
        "health": health, "jobs": counts,
        "per_minute": _object(["polls", "webhooks"], {"polls": rate, "webhooks": rate}) | {
            "description": "Measured between calls of this endpoint over the last minute: "
                           "null on a first call."},
    })
    return {"/v1/providers": {"get": _op(
        "Each provider: its schema, jobs by state, polls and webhooks per minute, and the "
        "health of its polling as this instance sees it.", {
            "200": _json(_object(["providers"], {
                "providers": {"type": "array", "items": provider}}), "The providers."),
            "401": _UNAUTHORIZED,
        }, tag="operations")}}


# -- components -----------------------------------------------------------------------------

def _security_schemes() -> JSON:
    return {
        "apiKey": {"type": "http", "scheme": "bearer",
                   "description": "One of `server.api_keys` (open on loopback when none), "
                                  "or a session token from `POST /v1/sessions`."},
        "subscribeToken": {"type": "apiKey", "in": "query", "name": "token",
                           "description": "A token from `POST /v1/tokens` or `POST /v1/jobs`."},
    }


def _nullable(schema: JSON) -> JSON:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(required: list[str], properties: JSON) -> JSON:
    return {"type": "object", "required": required, "properties": properties}


def _schemas() -> JSON:
    return {**_job_schemas(), **_request_schemas(), **_subscription_schemas()}


def _job_schemas() -> JSON:
    timestamp = _nullable({"type": "string", "format": "date-time"})
    job = _object(
        ["id", "provider", "schema", "external_id", "state", "terminal", "topics", "version"], {
            "id": _STR, "provider": _STR,
            "schema": _enum(Schema),
            "external_id": _STR,
            "state": _enum(State),
            "terminal": {"type": "boolean"},
            "provider_status": _nullable(_STR),
            "progress": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "stage": _nullable(_STR),
            "error": _nullable(_object(["code", "message", "fix", "retryable"], {
                "code": _STR, "message": _STR,
                "fix": {**_nullable(_STR), "description": "What to do about it, from the "
                        "provider's error catalog where it has one."},
                "retryable": {**_nullable({"type": "boolean"}),
                              "description": "Whether trying the job again may succeed; null "
                                             "when unknown."}})),
            "output": _nullable({"type": "object"}),
            "topics": {"type": "array", "items": _STR},
            "metadata": {"type": "object", "description": "Exactly what tracking was given."},
            "provider_data": {"type": "object", "description": "The provider's other "
                              "documented fields, as it sent them."},
            "created_at": timestamp, "started_at": timestamp, "finished_at": timestamp,
            "updated_at": timestamp,
            "version": {"type": "integer", "minimum": 0},
        })
    return {
        "Job": job,
        "Event": _object(["cursor", "received_at", "source", "job"], {
            "cursor": {"type": "string", "description": "Opaque; the SSE `id`."},
            "received_at": {"type": "string", "format": "date-time"},
            "source": _enum(Source),
            "job": _ref("Job"),
        }),
        "StreamEvent": _stream_event(),
        "JobList": _object(["jobs", "total", "limit", "offset"], {
            "jobs": {"type": "array", "items": _ref("Job")},
            "total": {"type": "integer"}, "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        }),
        "Accepted": _object(["accepted", "job_id"], {
            "accepted": {"const": True}, "job_id": _STR, "cursor": _STR,
            "duplicate": {"type": "boolean"},
        }),
        "Error": _object(["error", "message", "details", "request_id"], {
            "error": {"type": "string", "description": "A stable code, e.g. `forbidden`."},
            "message": _STR,
            "details": _nullable({"type": "object"}),
            "request_id": {"type": "string", "description": "Also in `X-Request-ID`."},
        }),
    }


def _stream_event() -> JSON:
    """One event of an SSE stream, as `schema` of `text/event-stream` describes it before
    OpenAPI 3.2 (`data` is the JSON the event carries)."""
    def carrying(schema: JSON) -> JSON:
        return {"type": "string", "contentMediaType": "application/json",
                "contentSchema": schema}

    reasons = [UNKNOWN_CURSOR, CURSOR_EXPIRED, TOO_FAR_BEHIND]
    return {
        "type": "object", "required": ["event", "data"],
        "description": "An event of the stream: `event:`, `data:` and, for a job's update, "
                       "`id:` (its cursor: send it back as `Last-Event-ID` to resume).",
        "oneOf": [
            _object(["event", "data", "id"], {
                "event": {"const": JOB_UPDATED}, "id": {"type": "string", "minLength": 1},
                "data": carrying(_ref("Job"))}),
            _object(["event", "data"], {
                "event": {"const": RESET},
                "data": carrying(_object(["reason"], {"reason": {"enum": reasons}}))}),
            _object(["event", "data"], {  # on the topic relay:ops
                "event": {"enum": sorted(OPS_EVENTS.values())},
                "data": carrying(_ref("Subscription"))}),
            _object(["event", "data"], {
                "event": {"enum": [UNAUTHORIZED, RECOVERED]},
                "data": carrying({"type": "object", "required": ["provider", "schema"],
                                  "description": "The provider: its name, schema and health."})}),
        ],
    }


def _request_schemas() -> JSON:
    text = _TEXT
    strings = {"type": "array", "items": text, "maxItems": TOPICS_PER_TOKEN}
    return {
        "TrackRequest": _object(["provider", "external_id"], {
            "provider": _NAME, "external_id": _NAME,
            "topics": {"type": "array", "maxItems": TOPICS_PER_JOB,
                       "items": {**text, "not": {"pattern": f"^({'|'.join(RESERVED_TOPICS)})"}},
                       "description": "Extra topics; `job:`, `provider:` and `relay:` are "
                                      "the relay's."},
            "metadata": {"type": "object", "description": "Kept with the job, as given; at "
                         f"most {METADATA_BYTES} bytes as JSON."},
        }),
        "Tracked": _object(["job", "webhook_url", "subscribe_token", "events_url"], {
            "job": _ref("Job"),
            "webhook_url": {"type": "string", "description": "Where the provider should send "
                            "this job's webhooks (its `webhookUrl`); its signed token proves "
                            "deliveries for this job and no other."},
            "subscribe_token": {"type": "string", "description": "A subscribe token for this "
                                f"job, valid for {TRACKED_TOKEN_TTL} seconds."},
            "events_url": {"type": "string", "description": "The job's SSE stream, with "
                           "`subscribe_token`."},
        }),
        "TokenRequest": {
            "type": "object",
            "description": "At least one of `jobs` and `topics`.",
            "anyOf": [{"required": [name], "properties": {name: {"minItems": 1}}}
                      for name in ("jobs", "topics")],
            "properties": {
                "jobs": strings, "topics": strings,
                "ttl": {"type": "integer", "minimum": 1, "maximum": TOKEN_TTL_MAX,
                        "default": TOKEN_TTL, "description": "Seconds until it expires."},
            },
        },
        "Token": _object(["token", "expires_at"], {
            "token": _STR,
            "expires_at": {"type": "integer", "description": "Unix seconds."},
        }),
    }


def _subscription_schemas() -> JSON:
    timestamp = {"type": "string", "format": "date-time"}
    topics = {"type": "array",
              "items": _TEXT, "minItems": 1, "maxItems": TOPICS_PER_SUBSCRIPTION,
              "description": "Jobs with any of these topics (`job:<id>`, `provider:<name>`, "
                             "the ones given when tracking); `*` for every job."}
    secret = {"type": "string", "pattern": SECRET_PATTERN,
              "description": "`whsec_` and the base64 of 24 to 64 bytes."}
    kinds = len(EventKind)
    events = {"type": "array", "items": _enum(EventKind), "minItems": 1, "maxItems": kinds,
              "uniqueItems": True,
              "description": "The changes it receives: `created` (a job's first event), "
                             "`state` (its state changed), `progress` (within its state, only "
                             "its progress or stage changed), `terminal` (it reached a "
                             "terminal state). Left out (or null): every event, including "
                             "changes of none of these kinds (an output or provider status "
                             "word within a state)."}
    subscription = {
        "id": _STR, "url": _STR, "topics": topics, "events": _nullable(events),
        "name": _nullable({"type": "string", "description": "The `name` of its "
                           "`[[subscriptions]]` entry (its id is `sub_cfg-<name>`)."}),
        "origin": {"type": "string", "enum": ["api", "config"]},
        "status": {**_enum(SubscriptionStatus), "description": "`active`: sent to at full "
                   "width. `failing`: 5 failed attempts in a row; one probe at a time (the "
                   "oldest due delivery), further apart after each failed one, until one "
                   "succeeds. `disabled`: it answered 410, or failed for longer than "
                   "`server.delivery_max_age`; its pending deliveries failed and new events "
                   "do not reach it until it is enabled."},
        "consecutive_failures": {"type": "integer", "minimum": 0},
        "last_error": _nullable({"type": "string", "description": "Of its latest failed "
                                 "attempt; kept after it recovers."}),
        "status_since": _nullable(timestamp),
        "enabled": {"type": "boolean", "description": "`status` is not `disabled` (kept for "
                    "clients written before `status`)."},
        "disabled_reason": _nullable(_STR), "created_at": timestamp,
    }
    required = ["id", "url", "topics", "events", "origin", "status", "consecutive_failures",
                "last_error", "enabled", "created_at"]
    return {
        "SubscriptionRequest": _object(["url"], {
            "url": {"type": "string", "maxLength": URL_LENGTH, "pattern": URL_PATTERN,
                    "description": "http:// or https://; not a loopback, "
                    "private, link-local or metadata address unless "
                    "`server.allow_private_targets`."},
            "topics": {**topics, "default": ["*"]},
            "events": _nullable(events),
            "secret": {**_nullable(secret), "description": "Generated when not given (or "
                       "null)."},
        }),
        "Subscription": _object(required, subscription),
        "ReplayRequest": _object(["since"], {
            "since": {"type": "string", "format": "date-time", "maxLength": 64,
                      "description": "ISO 8601 with its offset, e.g. `2026-01-02T03:04:05Z`: "
                                     "the deliveries made since then."},
            "only_failed": {"type": "boolean", "default": False,
                            "description": "Only the jobs whose newest delivery failed."},
        }),
        "Replayed": _object(["replayed", "truncated"], {
            "replayed": {"type": "integer", "minimum": 0, "maximum": REPLAY_MAX,
                         "description": "Deliveries queued again (one per job)."},
            "truncated": {"type": "boolean", "description": f"It stopped at {REPLAY_MAX} "
                          f"jobs or {REPLAY_SCAN} deliveries looked at: older ones were left."},
        }),
        "CreatedSubscription": _object([*required, "secret"], {**subscription, "secret": secret}),
        "Attempt": _object(["at", "duration", "status", "error"], {
            "at": timestamp, "duration": {"type": "number", "description": "Seconds."},
            "status": _nullable({"type": "integer", "description": "The consumer's answer."}),
            "error": _nullable(_STR),
        }),
        "Delivery": _object(["id", "subscription_id", "webhook_id", "job_id", "status",
                             "attempts"], {
            "id": _STR, "subscription_id": _STR,
            "webhook_id": {"type": "string",
                           "description": "The `webhook-id` header: the event's cursor."},
            "job_id": _STR, "job_version": {"type": "integer"},
            "status": {**_enum(DeliveryStatus),
                       "description": "`superseded`: a newer update of the job took its place "
                                      "while it was being retried."},
            "created_at": timestamp, "next_attempt_at": _nullable(timestamp),
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "superseded_by": _nullable(_STR), "reason": _nullable(_STR),
        }),
    }
