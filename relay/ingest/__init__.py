"""Ingest: how updates come in. Provider webhooks (`webhooks`), tracking (`tracking`) and
cancelling (`cancel`) jobs, the providers' API clients (`providers`), and the `recorder`,
the one way an update enters the store. No HTTP server here: relay.http calls these."""
