"""Prometheus metrics, one registry per app (so tests and several apps in one process never
share counts). Every name starts with `relay_`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MAX_FIELD_LABELS = 100
_INDEX = re.compile(r"\[\d+\]")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter("relay_webhooks", "Webhook deliveries by provider and outcome",
                                ["provider", "outcome"], registry=r)
        self.unknown_status = Counter("relay_unknown_status_words",
                                      "Provider status words the relay does not know",
                                      ["provider", "word"], registry=r)
        self.fields_ignored = Counter(
            "relay_payload_fields_ignored",
            "Optional payload fields left out, clamped or cut (wrong type, out of range, "
            "over a cap), by provider and field path",
            ["provider", "field"], registry=r)
        self._field_labels: set[tuple[str, str]] = set()
        self.events = Counter("relay_events", "Job events stored, by source", ["source"],
                              registry=r)
        self.polls = Counter("relay_polls", "Provider polls by provider and outcome",
                             ["provider", "outcome"], registry=r)
        self.polled_jobs = Gauge("relay_polled_jobs",
                                 "Unfinished jobs the poll scheduler follows, by provider",
                                 ["provider"], registry=r)
        self.provider_unauthorized = Gauge(
            "relay_provider_unauthorized",
            "1 while a provider's account cannot call its API (401, 402, 403 to a poll): "
            "its polling is paused and probed", ["provider"], registry=r)
        self.provider_pauses = Counter(
            "relay_provider_pauses",
            "Times a provider made relay pause its polls (429 or 503), by provider",
            ["provider"], registry=r)
        self.ops_events = Counter(
            "relay_ops_events",
            "Operational events told (topic relay:ops), by type", ["type"], registry=r)
        self.deadlines_exceeded = Counter(
            "relay_job_deadlines_exceeded",
            "Jobs failed with deadline_exceeded: not terminal max_job_age after tracking",
            ["provider"], registry=r)
        self.unreadable_entries = Counter(
            "relay_list_entries_unreadable",
            "Entries of a story provider's job list relay could not read (each such job is "
            "read on its own)", ["provider"], registry=r)
        self.catalog_reads = Counter(
            "relay_error_catalog_reads",
            "Reads of a generation provider's error catalog (GET /v2/errors), by outcome",
            ["provider", "outcome"], registry=r)
        self.catalog_codes = Gauge("relay_error_catalog_codes",
                                   "Error codes in the catalog last read from a provider",
                                   ["provider"], registry=r)
        self.subscribers = Gauge("relay_subscribers",
                                 "Connected subscribers: SSE streams and wait=true long-polls",
                                 registry=r)
        self.dropped_subscribers = Counter("relay_subscribers_dropped",
                                           "SSE subscribers dropped for not keeping up",
                                           registry=r)
        self.delivery_lag = Histogram(
            "relay_delivery_lag_seconds", "From an update's receipt to its fan-out",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.outbound_deliveries = Counter(
            "relay_outbound_deliveries",
            "Outbound webhook deliveries finished, by outcome (delivered, failed, gone)",
            ["outcome"], registry=r)
        self.outbound_attempts = Counter(
            "relay_outbound_attempts", "Outbound webhook attempts, by result (success, "
            "client_error, server_error, gone, timeout, unreachable, refused)",
            ["result"], registry=r)
        self.outbound_pending = Gauge("relay_outbound_pending",
                                      "Outbound deliveries waiting to be sent (queue depth)",
                                      registry=r)
        self.outbound_oldest = Gauge("relay_outbound_oldest_pending_seconds",
                                     "Age of the oldest pending outbound delivery", registry=r)
        self.outbound_subscriptions = Gauge(
            "relay_outbound_subscriptions",
            "Outbound webhook subscriptions, by status (active, failing, disabled)", ["status"],
            registry=r)
        self.outbound_transitions = Counter(
            "relay_outbound_transitions",
            "Outbound subscriptions that moved into a status (active, failing, disabled)",
            ["status"], registry=r)
        self.outbound_probes = Counter(
            "relay_outbound_probes", "Probes sent to failing outbound subscriptions",
            registry=r)
        self.outbound_replayed = Counter(
            "relay_outbound_replayed", "Outbound deliveries queued again by replays",
            registry=r)

    def count_ignored_fields(self, provider: str, paths: Iterable[str]) -> None:
        """Count each ignored field once. Paths become labels with their list indices dropped
        (`segments[].segmentOutputUrl`), and past a hundred distinct ones count as "other",
        so a provider sending odd payloads cannot grow the label set without bound."""
        for path in paths:
            label = (provider, _INDEX.sub("[]", path))
            if label not in self._field_labels and len(self._field_labels) < MAX_FIELD_LABELS:
                self._field_labels.add(label)
            field = label[1] if label in self._field_labels else "other"
            self.fields_ignored.labels(provider, field).inc()

    def by_provider(self, counter: Counter) -> dict[str, float]:
        """A counter's totals per `provider` label, its other labels summed over."""
        totals: dict[str, float] = {}
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    name = sample.labels["provider"]
                    totals[name] = totals.get(name, 0.0) + sample.value
        return totals

    def render(self) -> bytes:
        return generate_latest(self.registry)
