"""Outbound webhooks to downstream consumers: the `service` runs a `worker` per subscription,
which sends (`sending`) to checked targets (`targets`) and retries by `policy`; the config's
`[[subscriptions]]` are read by `subscriptions`."""
