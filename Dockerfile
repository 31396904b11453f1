# syntax=docker/dockerfile:1
# Mentorix memory sidecar image.
#   build:  docker build -t mentorix-memory-sidecar:0.1.0 .
#   run:    docker run --rm mentorix-memory-sidecar:0.1.0 --help
# Stage 1 builds the wheel; stage 2 installs only that wheel and its runtime
# dependencies, without extras: no test server, test runner or validators.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY shim ./shim
# --no-deps: only our wheel here; dependencies are resolved in the final stage.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mentorix-memory-sidecar" \
      org.opencontainers.image.description="Mirrors Mentorix JSON memory files into MongoDB"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    RUNTIME_DATA_DIR=/app/data/system \
    SIDECAR_HTTP_HOST=0.0.0.0 \
    SIDECAR_HTTP_PORT=8787 \
    SIDECAR_SOCKET=/run/memory-sidecar/sidecar.sock

# Fixed uid/gid so Kubernetes fsGroup / runAsUser and compose volumes can match it.
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin sidecar \
 && mkdir -p /app/data/system /run/memory-sidecar \
 && chown -R sidecar:sidecar /app /run/memory-sidecar

COPY --from=builder /dist/ /tmp/dist/
# Runtime dependencies from the lock (exact versions, sha256 of every artefact:
# `make lock` regenerates it), then our wheel alone: --no-deps, so nothing
# unpinned is resolved from the index.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
 && pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist /tmp/requirements.lock

# The shim's source, for the API container: Kubernetes copies it into a shared
# emptyDir with an init step (deploy/), compose bind-mounts ./shim instead.
COPY shim /opt/sidecar-shim/shim

WORKDIR /app
USER 10001:10001
EXPOSE 8787

# The slim image ships no HTTP client binary: probe /healthz with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIDECAR_HTTP_PORT', '8787'), timeout=4); sys.exit(0)"]

ENTRYPOINT ["memory-sidecar"]
CMD ["run"]
