# The replicator's container image: `replicator run` as a non-root user.
#
#   docker build -t replicator:local .
#   docker run --rm replicator:local --help
#
# Reproducible: the base image is pinned to an exact Python and Debian release, and every
# Python dependency is installed from requirements.lock with its hashes (binary wheels only),
# so a rebuild installs the same bytes. The project itself is built into a wheel with the
# build tools pinned in requirements-build.lock. To update a pin, edit pyproject.toml, then
# regenerate the locks (docs/production.md, "Updating the image's dependencies").

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the locked dependencies and the project's wheel, into /opt/venv ------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

COPY requirements-build.lock requirements.lock ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-deps --require-hashes -r requirements-build.lock \
 && python -m venv --without-pip /opt/venv \
 && /opt/build/bin/pip --python /opt/venv/bin/python install \
        --no-deps --require-hashes --only-binary=:all: -r requirements.lock

# A C compiler for the judge's compiled fast path (replicator/judge/_fastcheck.c); this stage only,
# the runtime image gets the built wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml setup.py ./
COPY replicator ./replicator
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps /wheels/replicator-*.whl \
 && /opt/venv/bin/python -c "import replicator.judge._fastcheck" \
 && /opt/venv/bin/replicator version

# ---- runtime: the venv, the schemas and an unprivileged user ----------------------------
FROM ${PYTHON_IMAGE}

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="replicator" \
      org.opencontainers.image.description="Kafka -> Azure Blob Storage + Scaleway Object Storage change-data-capture replicator" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${GID}" replicator \
 && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin replicator

COPY --from=build /opt/venv /opt/venv
COPY schemas /app/schemas

# The package's default schemas folder lies beside its source; installed as a wheel it does
# not, so the image names the copy in /app/schemas.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REPLICATOR_SCHEMAS_DIR=/app/schemas \
    REPLICATOR_METRICS_PORT=9108

WORKDIR /app
USER ${UID}:${GID}

# /metrics, /healthz and /readyz (REPLICATOR_METRICS_PORT).
EXPOSE 9108

ENTRYPOINT ["replicator"]
CMD ["run"]
