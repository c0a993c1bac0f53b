"""The `story` schema (seeds 000 and 002): Bearer auth, scene-by-scene progress, a job list."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.sim.auth import bearer_matches
from relay.sim.core import SimulatedProvider
from relay.sim.responses import int_param
from relay.sim.timeline import Lifecycle, SimJob, Step

LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
DEFAULT_ERROR = {"code": "generation_failed", "message": "The story could not be generated."}


def story_timeline(scenes: int = 4, step: float = 0.1, fail: bool = False) -> list[Step]:
    """pending, then processing with one more scene every `step` seconds, then completed with
    a result; with `fail`, failed (content_rejected) after half of the scenes."""
    if scenes < 1:
        raise ValueError("a story has at least one scene")
    done = scenes // 2 if fail else scenes
    steps = [Step(0.0, "pending", scenes_completed=0, scenes_total=scenes)]
    steps += [Step(step * (k + 1), "processing", scenes_completed=k) for k in range(done)]
    end = step * (done + 1)
    if fail:
        error = {"code": "content_rejected", "message": f"Scene {done + 1} was rejected."}
        return [*steps, Step(end, "failed", scenes_completed=done, error=error)]
    return [*steps, Step(end, "completed", scenes_completed=scenes, result=story_result(scenes))]


def story_result(scenes: int) -> dict[str, Any]:
    return {
        "title": "A simulated story",
        "scenes": [{"index": index, "text": f"Scene {index + 1}.",
                    "image_url": f"https://images.example/story/scene-{index + 1}.png"}
                   for index in range(scenes)],
    }


class StoryProvider(SimulatedProvider):
    """`GET /v1/generate/story/{id}`, `GET /v1/jobs/{id}` (route "get"), `GET /v1/jobs` ("list").

    Lists can be made odd the way real ones are: `garble(job_id, entry)` lists that job as
    `entry` (any JSON value) instead of its status object, and the values in `junk` are
    listed first, as the newest entries, counted in `total` like jobs."""

    lifecycle = Lifecycle(waiting=frozenset({"pending"}),
                          terminal=frozenset({"completed", "failed"}))

    def __init__(self, api_key: str, **options: Any) -> None:
        self.junk: list[Any] = []
        self._garbled: dict[str, Any] = {}
        super().__init__(api_key, **options)

    def garble(self, job_id: str, entry: Any) -> None:
        """List the job as `entry` from now on (its own status calls stay as they are)."""
        with self._lock:
            self._garbled[job_id] = entry

    def routes(self) -> list[Route]:
        return [
            self.route("/v1/generate/story/{id}", "get", self._get),
            self.route("/v1/jobs/{id}", "get", self._get),
            self.route("/v1/jobs", "list", self._list),
        ]

    def authorized(self, request: Request) -> bool:
        return bearer_matches(request, self.api_key)

    def default_timeline(self) -> list[Step]:
        return story_timeline()

    def initial_fields(self, job_id: str) -> dict[str, Any]:
        return {"scenes_completed": 0, "scenes_total": 0}

    def render(self, job: SimJob) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": job.id,
            "status": job.status,
            "scenes_completed": job.fields["scenes_completed"],
            "scenes_total": job.fields["scenes_total"],
            "created_at": self.iso(job.created),
        }
        if job.started is not None:
            body["started_at"] = self.iso(job.started)
        if job.finished is not None:
            body["completed_at"] = self.iso(job.finished)
        if job.status == "failed":
            body["error"] = job.fields.get("error") or DEFAULT_ERROR
        if job.status == "completed":
            body["result"] = job.fields.get("result") or {}
        return body

    async def _get(self, request: Request) -> Response:
        return JSONResponse(self.view(request.path_params["id"]))

    async def _list(self, request: Request) -> Response:
        limit = min(int_param(request.query_params, "limit", LIST_LIMIT_DEFAULT, minimum=1),
                    LIST_LIMIT_MAX)
        offset = int_param(request.query_params, "offset", 0)
        with self._lock:
            entries = [*self.junk, *(self._garbled[job.id] if job.id in self._garbled
                                     else self.render(job) for job in self.newest_first())]
        return JSONResponse({"generations": entries[offset:offset + limit],
                             "total": len(entries), "limit": limit, "offset": offset})
