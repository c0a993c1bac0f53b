"""The `jobstatus` schema (seed 003): Bearer auth, `GET /getJobStatus`, `POST /cancelJob`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.sim.auth import bearer_matches
from relay.sim.core import SimulatedProvider
from relay.sim.responses import SimError
from relay.sim.timeline import Lifecycle, SimJob, Step

STAGES = ("researching", "outlining", "generating_work", "finalizing")
MODEL = "google/gemini-2.5-flash-001"
# Rendered as given in the job's fields, with these defaults.
FIELD_DEFAULTS: dict[str, Any] = {
    "progress": 0.0, "percent_complete": 0.0, "progress_stage": "queued", "title": None,
    "is_byok": False, "reasoning_model": MODEL, "writing_model": MODEL, "function_model": MODEL,
    "error_message": None, "is_starred": False,
}


def jobstatus_timeline(stages: Sequence[str] = STAGES, step: float = 0.1,
                       fail: bool = False, cancelling: bool = False) -> list[Step]:
    """queued, then in_progress through `stages` (one every `step` seconds, progress rising),
    then completed at 100; with `fail`, failed with an error_message half way; with
    `cancelling`, a cancel asked for too late: `cancelling` after the stages, then completed."""
    if fail and cancelling:
        raise ValueError("a job either fails or is being cancelled, not both")
    done = len(stages) // 2 if fail else len(stages)
    steps = [Step(0.0, "queued", progress=0.0, percent_complete=0.0, progress_stage="queued")]
    for index, stage in enumerate(stages[:done]):
        percent = round(100 * index / len(stages), 1)
        steps.append(Step(step * (index + 1), "in_progress", progress=percent,
                          percent_complete=percent, progress_stage=stage))
    end = step * (done + 1)
    if fail:
        return [*steps, Step(end, "failed", error_message="The writing model timed out.")]
    if cancelling:
        steps.append(Step(end, "cancelling", progress_stage="cancelling"))
        end += step
    return [*steps, Step(end, "completed", progress=100.0, percent_complete=100.0,
                         progress_stage="completed")]


class JobStatusProvider(SimulatedProvider):
    """`GET /getJobStatus?jobId=` (route "get") and `POST /cancelJob` ("cancel")."""

    lifecycle = Lifecycle(waiting=frozenset({"queued"}),
                          terminal=frozenset({"completed", "failed", "cancelled"}))

    def routes(self) -> list[Route]:
        return [
            self.route("/getJobStatus", "get", self._get),
            self.route("/cancelJob", "cancel", self._cancel, method="POST"),
        ]

    def authorized(self, request: Request) -> bool:
        return bearer_matches(request, self.api_key)

    def default_timeline(self) -> list[Step]:
        return jobstatus_timeline()

    def initial_fields(self, job_id: str) -> dict[str, Any]:
        return {**FIELD_DEFAULTS, "user_id": str(uuid.uuid4()),
                "project_id": str(uuid.uuid4()), "title": f"Simulated job {job_id[:8]}"}

    def render(self, job: SimJob) -> dict[str, Any]:
        fields = job.fields
        body: dict[str, Any] = {"id": job.id, "user_id": fields["user_id"],
                                "project_id": fields["project_id"], "status": job.status}
        body.update((name, fields.get(name, default)) for name, default in FIELD_DEFAULTS.items())
        body["created_at"] = self.iso(job.created)
        body["updated_at"] = self.iso(job.updated)
        return body

    def cancel(self, job_id: str) -> None:
        """Cancel the job as `POST /cancelJob` does; SimError 404 if unknown, 409 if final."""
        with self._lock:
            job = self.require(job_id)
            if job.terminal:
                raise SimError(409, f"Job {job_id} is already {job.status}.",
                               code="already_terminal")
            self.change(job, Step(0.0, "cancelled", progress_stage="cancelled"))

    async def _get(self, request: Request) -> Response:
        job_id = request.query_params.get("jobId")
        if not job_id:
            raise SimError(400, "jobId is required.", code="invalid_parameter")
        return JSONResponse(self.view(job_id))

    async def _cancel(self, request: Request) -> Response:
        self.cancel(await _job_id_from_body(request))
        return JSONResponse({"message": "Job cancelled successfully"})


async def _job_id_from_body(request: Request) -> str:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise SimError(400, "The body is not valid JSON.", code="invalid_json") from None
    job_id = body.get("jobId") if isinstance(body, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise SimError(400, "jobId is required.", code="invalid_parameter")
    return job_id
