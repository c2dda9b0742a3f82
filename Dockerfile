# wavespeed-jobs: `serve` by default; `worker` and `migrate` from the same image.
# Build: docker build -t wavespeed-jobs .
# Run:   docker run --env-file .env -p 8000:8000 wavespeed-jobs
# The runtime dependencies come from requirements.lock (every version and hash fixed, so two
# builds a week apart install the same program; docs/operations.md says how to update it),
# then the project itself without resolving anything again. Checked by hadolint and by
# tests/integration/test_image_contents.py and test_plain_install.py (the same install).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock build-requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
# The build tools (pyproject's [build-system]) from a hashed lock of their own, in a venv of
# their own: the wheel is built with nothing fetched unpinned, and setuptools stays out of
# the image.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r build-requirements.lock
COPY pyproject.toml setup.py README.md ./
# The Alembic revisions (migrations/) are installed inside the package as
# service.db.migrations: `migrate` needs nothing from the working directory.
COPY service ./service
COPY migrations ./migrations
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl && /opt/venv/bin/pip check

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# Run `wavespeed-jobs migrate` once per release (the Compose file's migrate service, the
# Kubernetes migrate Job) before serve and worker start.
ENTRYPOINT ["wavespeed-jobs"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
