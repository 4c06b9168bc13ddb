"""The localtgi Quart app: `create_app(settings, model=None)`.

Use `create_app` to get an ASGI app serving TGI's native routes (`localtgi.serving_tgi`) and the
OpenAI-compatible `/v1` routes (`localtgi.serving_openai`). Its lifespan loads the model in a worker
thread when none is given, starts the engine, and stops it on shutdown. Serve it with hypercorn
(`localtgi.cli.serve`).
"""

from __future__ import annotations

import asyncio
import logging

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from localtgi.apidoc import routes as apidoc_routes
from localtgi.app_state import EXTENSION, Server, package_version
from localtgi.error_responses import error_response
from localtgi.errors import LocalTGIError, RequestBodyError
from localtgi.inference import Inference
from localtgi.metrics import Metrics
from localtgi.models import LoadedModel, load_model
from localtgi.permits import Permits
from localtgi.serving_openai import routes as openai_routes
from localtgi.serving_tgi import routes as tgi_routes
from localtgi.settings import Settings
from localtgi.validation import Validator

log = logging.getLogger(__name__)


async def start_server(settings: Settings, model: LoadedModel | None) -> Server:
    """Load (if needed) and start everything one app serves with."""
    from localtgi.engine import Engine  # OpenVINO import; kept off the module import path

    if model is None:
        model = await asyncio.to_thread(
            load_model, settings.model_id, cache_dir=settings.cache_dir, progress=log.info
        )
    limits = settings.limits_for(model.max_position_embeddings)
    engine = Engine(
        model, max_batch_size=settings.max_batch_size, threads=settings.num_threads, exact=settings.exact
    )
    await engine.start()
    metrics = Metrics(queue_size=lambda: engine.waiting, batch_size=lambda: engine.active)
    inference = Inference(
        engine,
        Validator(limits, model.tokenizer.encode),
        Permits(settings.max_concurrent_requests),
        metrics,
        model.eos_token_ids,
    )
    return Server(
        settings=settings,
        model=model,
        engine=engine,
        limits=limits,
        inference=inference,
        metrics=metrics,
        version=package_version(),
    )


def create_app(settings: Settings, model: LoadedModel | None = None) -> Quart:
    """A Quart app for `settings`; pass `model` to reuse an already loaded one (tests, the CLI)."""
    app = Quart("localtgi")
    # Streams and long generations must not be cut by Quart's 60 s response timeout.
    app.config["RESPONSE_TIMEOUT"] = None
    # Bodies a little over the limit are read and answered with a clean 413 by `parse_body`; only
    # absurd ones are cut off while still arriving (the client then sees the connection close).
    app.config["MAX_CONTENT_LENGTH"] = settings.payload_limit * 16

    @app.before_serving
    async def startup() -> None:
        app.extensions[EXTENSION] = await start_server(settings, model)

    @app.after_serving
    async def shutdown() -> None:
        srv: Server | None = app.extensions.pop(EXTENSION, None)
        if srv is not None:
            srv.healthy = False
            await srv.engine.stop()

    @app.before_request
    async def authorize() -> Response | None:
        # TGI: with --api-key the generation routes need `Bearer <key>` (compared ignoring case);
        # a failure is a 401 with an empty body. Health, info and metrics stay open.
        if settings.api_key is None or request.method != "POST" or request.path == "/chat_tokenize":
            return None
        given = request.headers.get("authorization", "")
        if given.lower() != f"bearer {settings.api_key}".lower():
            # Read the body first: answering before it is consumed makes hypercorn drop the
            # connection, which breaks clients that reuse it.
            await request.get_data()
            return Response(b"", status=401)
        return None

    @app.errorhandler(LocalTGIError)
    async def local_error(exc: LocalTGIError) -> Response:
        if isinstance(exc, RequestBodyError):
            return Response(exc.message, status=exc.status, content_type="text/plain; charset=utf-8")
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        # axum answers unknown routes with an empty body and oversized bodies with plain text.
        if exc.code == 413:
            return Response(
                "Failed to buffer the request body: length limit exceeded",
                status=413,
                content_type="text/plain; charset=utf-8",
            )
        return Response(b"", status=exc.code or 500)

    app.register_blueprint(tgi_routes)
    app.register_blueprint(openai_routes)
    app.register_blueprint(apidoc_routes)  # GET /api-doc/openapi.json and /docs, as TGI
    return app
