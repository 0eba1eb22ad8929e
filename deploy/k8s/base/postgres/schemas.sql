-- One role and one schema per service, with the same grants as shared.db.provision_service_role
-- (what `just up` and the tests do): the role owns its schema and nothing else, finds its tables
-- first (search_path), and may not create objects in public nor new schemas in the database.
--
-- Runs once, as a superuser, in the application database (relay) when Postgres is first created:
-- dev: from /docker-entrypoint-initdb.d of the postgres image (components/postgres-statefulset);
-- prod: CloudNativePG's bootstrap.initdb.postInitApplicationSQLRefs (components/postgres-cnpg).
-- The roles are made without LOGIN: their login and password come from each service's <svc>-db
-- Secret (dev: 20-role-passwords.sh; prod: the Cluster's managed.roles).
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['users', 'orders', 'notify'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = service) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', service);
        END IF;
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', service, service);
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', service, service);
        EXECUTE format('ALTER ROLE %I SET search_path = %I', service, service);
        EXECUTE format('REVOKE ALL ON SCHEMA public FROM %I', service);
    END LOOP;
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
