# Relay Shop: every command runs inside the uv environment (`uv run just <recipe>`).

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# start Postgres, NATS and the services under .data/ (Ctrl-C stops everything); --fresh wipes .data/ first
up *args:
    python -m shared.devstack {{args}}

# print the export lines one service's CLI needs against the running `just up`: eval "$(uv run just env users)"
env service *args:
    @python -m shared.devstack env {{service}} {{args}}

# walk a client through the whole story against a running `just up` (in another terminal)
demo:
    python scripts/demo.py

# wipe the local stack's data (.data/); refused while `just up` runs on it
reset:
    @python -m shared.devstack reset

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
    python -m shared.events.asyncapi

# benchmarks, each against a baseline measured in the same run (~1 minute); args go to the events pipeline
bench *args:
    python bench/events_pipeline.py {{args}}
    python bench/order_reads.py
    python bench/email.py
    python bench/input_boundary.py

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

# render the Kubernetes overlays and check them offline: schemas, security, NATS config, Postgres SQL, hadolint
k8s-check:
    python scripts/render_nats_config.py --check
    mypy deploy/k8s/base/common/wait_for_migrations.py
    pytest -q tests/deploy --ignore=tests/deploy/test_images.py
