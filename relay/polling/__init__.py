"""Polling: the `scheduler` follows the store's log and feeds one poller per provider
(`pollers`), timed by `schedule` and shared between instances through `leases`."""
