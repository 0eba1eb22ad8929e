# syntax=docker/dockerfile:1
# Every service's image, from one file: `api` (default), `worker` and `migrate` are its commands.
# Build from the workspace root, naming the service twice (the build stage takes the argument; the
# last stage, named after the service, holds what exec-form ENTRYPOINT and ENV keys cannot take
# from an argument):
#   docker build --build-arg SERVICE=orders --target orders -t relay-shop/orders:dev .
# Run another command:  docker run --env-file orders.env relay-shop/orders:dev worker

# The base of every stage. The default is the official image; `just images` passes a local
# equivalent built from Debian packages (scripts/images.py), where the official one cannot be pulled.
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

# ---- build: a virtual environment holding the service, shared and their runtime dependencies only
FROM ${BASE_IMAGE} AS build

# uv comes from PyPI, pinned, like every other package of the build.
RUN pip install --no-cache-dir uv==0.13.9

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src

# uv.lock is not committed (it names the registry): lock from the pins in the root pyproject.
# Locking reads every workspace member's metadata (devtools' too: the dev group names it); only
# the service and shared are installed.
COPY pyproject.toml ./
COPY libs/shared/pyproject.toml libs/shared/
COPY libs/devtools/pyproject.toml libs/devtools/
COPY services/users/pyproject.toml services/users/
COPY services/orders/pyproject.toml services/orders/
COPY services/notify/pyproject.toml services/notify/
RUN --mount=type=cache,target=/root/.cache/uv uv lock

# users, orders or notify (shared.events.topology declares them). Declared only here: a build
# argument is part of the cache key of every RUN after it, so the steps above are one layer for all
# three services' builds.
ARG SERVICE
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --package "${SERVICE}" --no-dev --frozen --no-install-workspace

# The code last, so a code change reuses the dependency layer. Non-editable: the venv owns
# real wheels of shared and the service (migrations included) and needs no source tree at run time.
COPY libs/shared/src libs/shared/src
COPY services/${SERVICE}/src services/${SERVICE}/src
# uv leaves its lock file in the venv writable by everyone: nothing there may be the runtime user's.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --package "${SERVICE}" --no-dev --frozen --no-editable \
    && rm -f "$UV_PROJECT_ENVIRONMENT/.lock"

# ---- runtime: the slim Python with the venv, as an unprivileged numeric user
FROM ${BASE_IMAGE} AS runtime

RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin relay

# Owned by root, so the service cannot change its own code.
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
EXPOSE 8000 9000
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the image runs three commands on different ports; Kubernetes probes the
# right one (/health/live and /health/ready on 8000 for api, 9000 for worker).

# Last: the revision changes with every commit, and every step after it would be rebuilt.
ARG BASE_IMAGE
ARG SERVICE
ARG VERSION=0.1.0
ARG REVISION=unknown
# (each service's stage below says what it does in its own description)
LABEL org.opencontainers.image.title="relay-shop-${SERVICE}" \
      org.opencontainers.image.description="Relay Shop ${SERVICE} service (api, worker, migrate)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# ---- one last stage per service: its command, its settings' names, what it does. In a container
# the API and the worker's health port listen on every interface. The default command: granian
# (ASGI, workers from <SERVICE>_HTTP_WORKERS); a worker has 20 s to finish after SIGTERM, below the
# pod's terminationGracePeriodSeconds. CMD follows ENTRYPOINT in each stage: setting ENTRYPOINT
# clears an inherited CMD.
FROM runtime AS users
ENV USERS_HTTP_HOST=0.0.0.0 USERS_HTTP_PORT=8000 USERS_WORKER_HEALTH_HOST=0.0.0.0 USERS_WORKER_HEALTH_PORT=9000
ENTRYPOINT ["users"]
CMD ["api", "--kill-timeout", "20"]
LABEL org.opencontainers.image.description="Relay Shop users service: identities, sign-in, access tokens (api, worker, migrate)"

FROM runtime AS orders
ENV ORDERS_HTTP_HOST=0.0.0.0 ORDERS_HTTP_PORT=8000 ORDERS_WORKER_HEALTH_HOST=0.0.0.0 ORDERS_WORKER_HEALTH_PORT=9000
ENTRYPOINT ["orders"]
CMD ["api", "--kill-timeout", "20"]
LABEL org.opencontainers.image.description="Relay Shop orders service: catalog, stock, orders (api, worker, migrate)"

FROM runtime AS notify
ENV NOTIFY_HTTP_HOST=0.0.0.0 NOTIFY_HTTP_PORT=8000 NOTIFY_WORKER_HEALTH_HOST=0.0.0.0 NOTIFY_WORKER_HEALTH_PORT=9000
ENTRYPOINT ["notify"]
CMD ["api", "--kill-timeout", "20"]
LABEL org.opencontainers.image.description="Relay Shop notify service: notifications in the app, live and by email (api, worker, migrate)"
