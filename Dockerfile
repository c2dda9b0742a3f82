# wavespeed-jobs: `serve` by default; `worker` and `migrate` from the same image.
# Build: docker build -t wavespeed-jobs .
# Run:   docker run --env-file .env -p 8000:8000 wavespeed-jobs
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
RUN useradd --system --uid 10001 --home /app app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# Migrations run from the working directory (service/db/engine.py looks here in an image).
COPY alembic.ini ./
COPY migrations ./migrations
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# Run `wavespeed-jobs migrate` once per release (e.g. an init container) before serve.
ENTRYPOINT ["wavespeed-jobs"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
