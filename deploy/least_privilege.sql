-- The least-privilege PostgreSQL role that runs recon_pipeline.
--
-- What the role may do, and nothing else:
--   * read the application's table (SELECT on it, USAGE on its schema);
--   * write the three reconciliation columns of that table: UPDATE (actual_cost_cents,
--     reconciled_at, reconciliation_status). Every other column, INSERT, DELETE and
--     TRUNCATE are refused;
--   * create and own the analyst tables in a schema of their own (USAGE and CREATE on it);
--   * connect, and create the temporary staging tables of a session (CONNECT, TEMPORARY);
--   * see every row under row-level security, and update every row (two policies below).
-- It is not the owner of the application's table, so it cannot alter it: apply the
-- migration (`recon-migrate`) as the table's owner first.
--
-- Run it once, as the owner of the application's table or a superuser, with psql:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 \
--     -v role=recon_pipeline -v database=app \
--     -v usage_schema=public -v usage_table=token_usage -v output_schema=recon \
--     -f deploy/least_privilege.sql
--
-- then give the role a password without writing it down here (`\password recon_pipeline`
-- in psql), and point the pipeline at it:
--
--   RECON_DATABASE_URL=postgresql+psycopg://recon_pipeline:…@host:5432/app
--   RECON_USAGE_SCHEMA=public  RECON_USAGE_TABLE=token_usage  RECON_OUTPUT_SCHEMA=recon
--
-- Each :"name" below is a psql variable, quoted as an identifier. The output schema must not
-- be the application's schema: CREATE there would let the role add tables next to the
-- application's.

CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"role";

GRANT USAGE ON SCHEMA :"usage_schema" TO :"role";
GRANT SELECT ON TABLE :"usage_schema".:"usage_table" TO :"role";
GRANT UPDATE (actual_cost_cents, reconciled_at, reconciliation_status)
    ON TABLE :"usage_schema".:"usage_table" TO :"role";

CREATE SCHEMA IF NOT EXISTS :"output_schema";
GRANT USAGE, CREATE ON SCHEMA :"output_schema" TO :"role";

-- Row-level security. With RLS enabled (Supabase enables it on every exposed table) and no
-- policy for the role, PostgreSQL shows it no row and lets it update none, silently; the
-- pipeline refuses to run then. These policies let the role read every row and update every
-- row, and the column grant above still limits the update to the three columns. They do
-- nothing while RLS is disabled, and no other role is affected.
CREATE POLICY recon_pipeline_read ON :"usage_schema".:"usage_table"
    FOR SELECT TO :"role" USING (true);
CREATE POLICY recon_pipeline_write ON :"usage_schema".:"usage_table"
    FOR UPDATE TO :"role" USING (true) WITH CHECK (true);
