"""`midtrain serve ROUTER_DIR`: an OpenAI-compatible HTTP endpoint that routes each request to an adapter.

`POST /v1/chat/completions` (tools, tool_choice auto/none, stream) and `GET /v1/models`. The model name
`midtrain` (or `--served-model-name`) routes with the trained router; an adapter's own name, or `base`, picks
it directly. The chosen adapter, cluster and router score go in the `x-midtrain-adapter`,
`x-midtrain-cluster` and `x-midtrain-route-score` headers, in a `midtrain` field of the body, and in the log.

Why FastAPI + uvicorn rather than the standard library's http.server: it is the stack vLLM's own OpenAI server
runs on (so a vLLM user deploys this the same way), it speaks HTTP/1.1 with keep-alive and chunked transfer,
which server-sent events need (http.server is HTTP/1.0 by default and documented as not for production), it
runs blocking generation in a thread pool while other requests are accepted, and it validates request bodies
with pydantic, which midtrain already uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.completions import ChatRequest, ChatService, PeftEngine, RequestError, VllmEngine
from pipelines.errors import BadInput

log = logging.getLogger("midtrain.serve")


def load_service(
    router_dir: str | Path,
    backend: str = "peft",
    upstream: str | None = None,
    served_name: str = "midtrain",
    thought_schema: str = "think-plan-reflect",
    default_max_tokens: int = 512,
) -> ChatService:
    """The request path over a router bundle: PEFT in this process, or a vLLM server at `upstream`."""
    from pipelines.thought import load_thought_schema

    schema = load_thought_schema(thought_schema)
    if backend == "peft":
        if upstream:
            raise BadInput("--upstream is for --backend vllm")
        from pipelines.serve import Router

        router = Router(router_dir, thought_schema)
        engine: PeftEngine | VllmEngine = PeftEngine(router)
        return ChatService(engine, router.route, router.tokenizer, schema, served_name, default_max_tokens)
    if backend != "vllm":
        raise BadInput(f"--backend {backend!r}: expected peft or vllm")
    if not upstream:
        raise BadInput(
            "--backend vllm needs --upstream URL (the vLLM server `midtrain router export` starts)"
        )
    from pipelines.router import adapter_source, load_bundle
    from pipelines.serve import serving_tokenizer

    requests, meta = load_bundle(router_dir)
    if requests.method == "arrow":
        raise BadInput("an Arrow bundle mixes adapters per token inside the model; vLLM cannot serve it")
    sources = {name: adapter_source(Path(router_dir), ref) for name, ref in requests.adapters.items()}
    tokenizer = serving_tokenizer(sources, meta.base_model)
    engine = VllmEngine(upstream, list(sources))
    return ChatService(
        engine, lambda text: requests.route([text])[0], tokenizer, schema, served_name, default_max_tokens
    )


def create_app(service: ChatService) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="midtrain serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return JSONResponse(RequestError(f"{where}: {first['msg']}", param=where).body(), status_code=400)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return service.models()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest) -> Any:
        prepared = service.prepare(body)
        if body.stream:
            return StreamingResponse(
                service.stream(prepared), media_type="text/event-stream", headers=prepared.headers()
            )
        return JSONResponse(service.complete(prepared), headers=prepared.headers())

    return app


def serve(service: ChatService, host: str, port: int) -> None:
    import uvicorn

    log.info(
        "midtrain serve: http://%s:%d/v1 (models: %s)",
        host,
        port,
        [m["id"] for m in service.models()["data"]],
    )
    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
