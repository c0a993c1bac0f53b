"""Fan-out over server-sent events. It only reads from the store: the `hub` follows the event
log and hands each event, encoded once (`wire`), to the local subscribers; a stream
(`stream`) sends its backlog then its live frames (`resume`); a long-poll (`longpoll`) waits
for a job's terminal frame."""
