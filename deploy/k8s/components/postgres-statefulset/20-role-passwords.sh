#!/bin/sh
# DEV ONLY. Run once by the postgres image on an empty data directory, after 10-schemas.sql made
# the roles: gives each service role its login with the password of its <service>-db Secret
# (prod: CloudNativePG's managed.roles does this from the same Secrets).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=users_password="$USERS_DB_PASSWORD" \
    --set=orders_password="$ORDERS_DB_PASSWORD" \
    --set=notify_password="$NOTIFY_DB_PASSWORD" <<'SQL'
ALTER ROLE users LOGIN PASSWORD :'users_password';
ALTER ROLE orders LOGIN PASSWORD :'orders_password';
ALTER ROLE notify LOGIN PASSWORD :'notify_password';
SQL
