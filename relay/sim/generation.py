"""The `generation` schema (seed 001): `x-api-key` auth, long-poll `wait`, `include=progress`,
signed webhooks, and the error catalog at `GET /v2/errors` (unauthenticated)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.sim.auth import header_matches
from relay.sim.core import SimulatedProvider
from relay.sim.responses import SimError, bool_param, float_param
from relay.sim.timeline import Lifecycle, SimJob, Step

WAIT_DEFAULT = 30.0
WAIT_MAX = 55.0
# Answered null until a step sets them.
OPTIONAL_FIELDS = ("outputUrl", "outputDuration", "outputFileName", "segments",
                   "segmentOutputUrl", "synthesizedAudioUrl", "projectId", "error", "errorCode")
CATALOG: list[dict[str, Any]] = [
    {"code": "generation_input_video_inaccessible",
     "message": "The input video could not be downloaded.",
     "suggestedFix": "Make the video URL publicly readable, or pass a presigned URL that "
                     "outlives the generation.",
     "retryable": False},
    {"code": "generation_content_rejected",
     "message": "The input was rejected by moderation.",
     "suggestedFix": "Review the content policy, change the input and submit it again.",
     "retryable": False},
    {"code": "generation_timeout", "message": "The generation took too long.",
     "suggestedFix": "Try again; split long inputs into shorter segments.", "retryable": True},
    {"code": "insufficient_credits", "message": "The account has run out of credits.",
     "suggestedFix": "Add credits to the account, then create the generation again.",
     "retryable": False},
]
"""What `GET /v2/errors` answers by default: `{"errors": [...]}` (set `catalog` to change it)."""


def generation_timeline(step: float = 0.1, progress_steps: int = 3, fail: bool = False,
                        reject: bool = False) -> list[Step]:
    """PENDING, PROCESSING with `progress_percent` rising every `step` seconds, then COMPLETED
    with an output; with `fail`, FAILED with an errorCode; with `reject`, REJECTED at once."""
    if fail and reject:
        raise ValueError("a generation either fails or is rejected, not both")
    steps = [Step(0.0, "PENDING", progress_percent=0.0)]
    if reject:
        return [*steps, Step(step, "REJECTED", error="The input was rejected by moderation.",
                             errorCode="generation_content_rejected")]
    steps += [Step(step * (index + 1), "PROCESSING",
                   progress_percent=round(100 * index / progress_steps, 1))
              for index in range(progress_steps)]
    end = step * (progress_steps + 1)
    if fail:
        return [*steps, Step(end, "FAILED", error="The input video could not be downloaded.",
                             errorCode="generation_input_video_inaccessible")]
    return [*steps, Step(end, "COMPLETED", progress_percent=100.0, outputDuration=12.5,
                         outputUrl="https://cdn.example/generations/output.mp4")]


@dataclass(frozen=True)
class GetQuery:
    wait: bool
    timeout: float
    progress: bool

    @classmethod
    def parse(cls, params: QueryParams) -> GetQuery:
        include = {word.strip() for word in params.get("include", "").split(",")}
        query = cls(bool_param(params, "wait"),
                    float_param(params, "timeout", WAIT_DEFAULT, maximum=WAIT_MAX),
                    "progress" in include)
        if query.wait and query.progress:
            raise SimError(400, "wait=true cannot be combined with include=progress.",
                           code="invalid_parameter")
        return query


class GenerationProvider(SimulatedProvider):
    """`GET /v2/generate/{id}` (route "get"; `reads` counts them by kind: "progress", "wait",
    "plain") and `GET /v2/errors` ("errors", no API key: answers `catalog`). Pushes each status
    change to the job's webhook URL with its `progress_percent`, signed with `webhook_secret`
    (payloads say `error_code` rather than `errorCode`). A job created without a webhook URL
    shows `webhookUrl: null`; one created with another's URL calls that one."""

    lifecycle = Lifecycle(waiting=frozenset({"PENDING"}),
                          terminal=frozenset({"COMPLETED", "FAILED", "REJECTED"}))

    def __init__(self, api_key: str, **options: Any) -> None:
        self.catalog: Any = {"errors": CATALOG}
        self.reads: Counter[str] = Counter()
        super().__init__(api_key, **options)

    def routes(self) -> list[Route]:
        return [self.route("/v2/generate/{id}", "get", self._get),
                self.route("/v2/errors", "errors", self._errors, public=True)]

    def authorized(self, request: Request) -> bool:
        return header_matches(request, "x-api-key", self.api_key)

    def default_timeline(self) -> list[Step]:
        return generation_timeline()

    def initial_fields(self, job_id: str) -> dict[str, Any]:
        media = f"https://media.example/{job_id}"
        return {"model": "lipsync-2", "options": {},
                "input": [{"type": "video", "url": f"{media}/input.mp4"},
                          {"type": "audio", "url": f"{media}/input.wav"}]}

    def render(self, job: SimJob) -> dict[str, Any]:
        fields = job.fields
        body: dict[str, Any] = {
            "id": job.id, "createdAt": self.iso(job.created), "status": job.status,
            "model": fields["model"], "input": fields["input"], "options": fields["options"],
        }
        body.update((name, fields.get(name)) for name in OPTIONAL_FIELDS)
        body["webhookUrl"] = job.webhook_url
        return body

    def webhook_payload(self, job: SimJob) -> dict[str, Any]:
        payload = {("error_code" if key == "errorCode" else key): value
                   for key, value in self.render(job).items()}
        payload["progress_percent"] = self._progress(job)
        return payload

    async def _errors(self, request: Request) -> Response:
        return JSONResponse(self.catalog)

    async def _get(self, request: Request) -> Response:
        query = GetQuery.parse(request.query_params)
        self.reads["wait" if query.wait else "progress" if query.progress else "plain"] += 1
        job_id = request.path_params["id"]
        self.view(job_id)  # an unknown job is a 404 at once, not after the wait
        if query.wait:
            await self.hold_until_terminal(job_id, query.timeout)
        with self._lock:
            job = self.require(job_id)
            body = self.render(job)
            if query.progress:
                body["progress_percent"] = self._progress(job)
        return JSONResponse(body)

    def _progress(self, job: SimJob) -> float:
        if job.status == "COMPLETED":
            return 100.0
        return float(job.fields.get("progress_percent", 0.0))
