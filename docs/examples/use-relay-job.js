// useRelayJob(url, token): the latest state of one job, live, for React. `url` is the job's
// `events_url` from POST /v1/jobs; `token` (optional) returns a fresh subscribe token.
import { useEffect, useRef, useState } from "react";
import { subscribe } from "https://relay.example.com/client.js"; // your relay's /client.js

export function useRelayJob(url, token) {
  const [job, setJob] = useState(null);
  const latestToken = useRef(token);
  latestToken.current = token; // a new callback each render must not reopen the stream
  useEffect(() => {
    const refresh = latestToken.current && (() => latestToken.current());
    const subscription = subscribe(url, { onJob: setJob, token: refresh });
    return () => subscription.close();
  }, [url]);
  return job;
}
