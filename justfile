# Relay Shop: every command runs inside the uv environment (`uv run just <recipe>`).

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# start Postgres, NATS and the services under .data/ (Ctrl-C stops everything); --fresh wipes .data/ first
[no-exit-message]
up *args:
    @python -m devtools.stack {{args}}

# print the export lines one service's CLI needs against the running `just up`: eval "$(uv run just env users)"
[no-exit-message]
env service *args:
    @python -m devtools.stack env {{service}} {{args}}

# walk a client through the whole story against a running `just up` (in another terminal)
demo:
    python scripts/demo.py

# recent traces the local stack collected: root route, services, duration, errors (-n N for more)
[no-exit-message]
traces *args:
    @python -m devtools.traces list {{args}}

# one trace as a waterfall across services: `just trace last` or `just trace <id or prefix>`
[no-exit-message]
trace id="last":
    @python -m devtools.traces show {{id}}

# the local stack's emails (to, subject, time, delivery status), newest first; `just mail 1` prints the newest (--raw: the .eml)
[no-exit-message]
mail *args:
    @python -m devtools.stack.mail {{args}}

# every service's outbox backlog, stream and consumers (pending, redelivered, dead-lettered) against the running stack
[no-exit-message]
events *args:
    @python -m devtools.stack.events {{args}}

# wipe the local stack's data (.data/); refused while `just up` runs on it
[no-exit-message]
reset:
    @python -m devtools.stack reset

# lint, then every test (unit, integration against real Postgres and NATS)
test *args: lint
    pytest {{args}}

# ruff and mypy --strict over everything
lint:
    ruff check .
    ruff format --check .
    mypy libs services tests scripts bench conftest.py

# regenerate docs/asyncapi.json from the event contracts (refuses changes that break a published version)
asyncapi:
    python -m devtools.asyncapi

# benchmarks, each against a baseline measured in the same run (~1 minute each; the HTTP one ~15); args go to the events pipeline
bench *args:
    python -m bench.events_pipeline {{args}}
    python -m bench.order_reads
    python -m bench.email
    python -m bench.input_boundary
    python -m bench.framework_floor
    python -m bench.http

# format and fix what ruff can
fmt:
    ruff format .
    ruff check --fix .

# resolve and pin every dependency in pyproject.toml (add --upgrade to move to newer versions)
lock *args:
    python scripts/lock.py {{args}}

# migrate one service's schema to head, e.g. `just migrate users` (settings from USERS_* variables)
migrate service:
    {{service}} migrate

# build the three images with buildah against a base made from Debian packages (no Docker; cache: /var/cache/relay-images)
images *services:
    python scripts/images.py {{services}}

# check the images `just images` built: their files, and migrate, api, worker run inside them as uid 10001
images-check:
    pytest -q tests/images
    python scripts/images.py --report

# render the Kubernetes overlays and check them offline: schemas, security, NATS config, Postgres SQL, hadolint
k8s-check:
    python scripts/render_nats_config.py --check
    mypy deploy/k8s/base/common/wait_for_migrations.py
    pytest -q tests/deploy --ignore=tests/deploy/test_images.py
