"""Fan-out: how updates go out. It only reads from the store: the `hub` follows the event
log and hands each event, encoded once, to the local SSE streams (`sse`); the jobs API
(`jobs_api`) serves state and history to HTTP consumers."""
