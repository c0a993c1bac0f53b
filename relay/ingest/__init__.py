"""Ingest: how updates come in. Provider webhooks (`webhooks`), their verification
(`signatures`), tracking through the API (`tracking`), and polling (`polling`)."""
