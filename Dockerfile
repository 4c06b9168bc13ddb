# The Infernet container: slim Python, no torch. Listens on 0.0.0.0:3000 as Infernet nodes expect.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RUNTIME=docker \
    TGI_INF_HOST=0.0.0.0 \
    TGI_INF_PORT=3000 \
    TGI_INF_WORKERS=auto

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 infernet
USER infernet

EXPOSE 3000
# The port the server is told to use (TGI_INF_PORT; keep it in step when a `command` changes the port).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('TGI_INF_PORT', '3000'), timeout=2)"
# One worker per CPU the container gets (TGI_INF_WORKERS=auto). A node's `command` (e.g.
# "--bind=0.0.0.0:3000 --workers=2") replaces CMD and is honoured. On `docker stop` (SIGTERM) jobs in
# flight get TGI_INF_SHUTDOWN_GRACE (default: the job deadline) to finish: give the stop timeout as much.
ENTRYPOINT ["infernet-tgi"]
CMD ["--host", "0.0.0.0", "--port", "3000"]
