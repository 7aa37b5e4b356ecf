"""The application's database as it is (DESIGN: "The application's database as it is"):
its `token_usage` after its own reconciliation migration, with uuid ids, a generated
`total_tokens`, `metadata jsonb`, INTEGER costs, a status without CHECK, four indexes of
its own, row-level security, its view `token_usage_with_costs` and a view on that view in
another schema; filled with the demo's rows, so the demo's export files reconcile them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.runs import LAST_DAY, SmallDemo
from recon_pipeline_tests.test_security import SCRIPT, psql_statements

APP_TABLE = """
CREATE TABLE {t} (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid,
    action_type text NOT NULL,
    model_used text NOT NULL,
    input_tokens integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    total_tokens integer GENERATED ALWAYS AS (input_tokens + output_tokens) STORED,
    calculated_cost_cents INTEGER,
    success boolean DEFAULT true,
    metadata jsonb,
    created_at timestamptz DEFAULT now(),
    openai_request_id text,
    openai_created bigint,
    system_fingerprint text,
    actual_cost_cents INTEGER,
    reconciled_at timestamptz,
    reconciliation_status text DEFAULT 'pending'
);
CREATE INDEX idx_token_usage_openai_request_id ON {t} (openai_request_id);
CREATE INDEX idx_token_usage_reconciliation_status ON {t} (reconciliation_status);
CREATE INDEX idx_token_usage_created_at ON {t} (created_at);
CREATE INDEX idx_token_usage_user_created ON {t} (user_id, created_at);
ALTER TABLE {t} ENABLE ROW LEVEL SECURITY
"""
FILL = """
INSERT INTO {t} (user_id, action_type, model_used, input_tokens, output_tokens,
                 calculated_cost_cents, success, metadata, created_at, openai_request_id,
                 openai_created, system_fingerprint)
SELECT user_id::uuid, action_type, model_used, input_tokens, output_tokens,
       round(calculated_cost_cents)::integer, true,
       jsonb_build_object('route', action_type, 'cached', cached_input_tokens),
       created_at, openai_request_id, openai_created, system_fingerprint
FROM {source} ORDER BY id
"""
# What the application's earlier attempts left: whole-cent costs, a status of its own, NULLs.
EARLIER = """
UPDATE {t} SET actual_cost_cents = calculated_cost_cents, reconciliation_status = 'matched'
WHERE id IN (SELECT id FROM {t} WHERE openai_request_id IS NOT NULL ORDER BY created_at LIMIT 7);
UPDATE {t} SET reconciliation_status = 'not found'
WHERE id IN (SELECT id FROM {t} WHERE openai_request_id IS NULL ORDER BY created_at LIMIT 3);
UPDATE {t} SET reconciliation_status = NULL
WHERE id IN (SELECT id FROM {t} WHERE openai_request_id IS NULL ORDER BY created_at DESC LIMIT 2)
"""
APP_VIEWS = """
CREATE VIEW {app}.token_usage_with_costs WITH (security_invoker = true) AS
SELECT t.*,
       t.calculated_cost_cents / 100.0 AS estimated_cost_dollars,
       t.actual_cost_cents / 100.0 AS actual_cost_dollars,
       round(t.total_tokens::numeric / NULLIF(t.calculated_cost_cents, 0), 4) AS tokens_per_cent,
       t.model_used LIKE 'gpt-4o%' AS is_4o_family
FROM {t} t;
COMMENT ON VIEW {app}.token_usage_with_costs IS 'Admin panel: costs in dollars';
COMMENT ON COLUMN {app}.token_usage_with_costs.actual_cost_dollars IS 'What OpenAI billed';
GRANT SELECT ON {app}.token_usage_with_costs TO {role};
GRANT SELECT (id, actual_cost_dollars) ON {app}.token_usage_with_costs TO PUBLIC;
ALTER VIEW {app}.token_usage_with_costs OWNER TO {owner};
CREATE VIEW {app}.pending_usage AS
SELECT * FROM {t} WHERE reconciliation_status = 'pending' WITH LOCAL CHECK OPTION;
ALTER VIEW {app}.pending_usage OWNER TO {owner};
CREATE FUNCTION {app}.queue_pending() RETURNS trigger LANGUAGE plpgsql AS
'BEGIN INSERT INTO {t} (action_type, model_used) VALUES (NEW.action_type, NEW.model_used);
RETURN NEW; END';
CREATE TRIGGER queue_pending INSTEAD OF INSERT ON {app}.pending_usage
FOR EACH ROW EXECUTE FUNCTION {app}.queue_pending();
CREATE VIEW {analytics}.daily_spend WITH (security_barrier = true) AS
SELECT date_trunc('day', created_at) AS day, action_type, count(*) AS calls,
       sum(estimated_cost_dollars) AS estimated_dollars,
       sum(actual_cost_dollars) AS actual_dollars
FROM {app}.token_usage_with_costs GROUP BY 1, 2;
ALTER VIEW {analytics}.daily_spend OWNER TO {owner}
"""
# The app's views and a total order on each one's rows.
VIEWS = {
    "token_usage_with_costs": "id",
    "pending_usage": "id",
    "daily_spend": "day, action_type",
}


@dataclass
class AppDatabase:
    engine: sa.Engine
    url: str
    app: str
    analytics: str
    output: str
    role: str
    role_url: str
    owner: str
    demo: SmallDemo

    @property
    def table(self) -> str:
        return f'"{self.app}"."token_usage"'

    def view(self, name: str) -> str:
        schema = self.analytics if name == "daily_spend" else self.app
        return f'"{schema}".{name}'

    def rows(self, sql: str, **params: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]

    def execute(self, script: str) -> None:
        execute(self.engine, script)

    def view_rows(self) -> dict[str, list[tuple]]:
        return {
            name: self.rows(f"SELECT * FROM {self.view(name)} ORDER BY {order}")
            for name, order in VIEWS.items()
        }

    def view_catalogue(self) -> dict[str, tuple]:
        """Everything of each view a drop would lose, except the column types."""
        return {
            name: self.rows(
                "SELECT pg_get_userbyid(c.relowner), c.reloptions, c.relacl::text,"
                " obj_description(c.oid, 'pg_class'),"
                " array(SELECT a.attname || '=' || coalesce(col_description(c.oid, a.attnum), '')"
                "   || coalesce(a.attacl::text, '') FROM pg_attribute a"
                "   WHERE a.attrelid = c.oid AND a.attnum > 0 ORDER BY a.attnum)"
                " || array(SELECT tgname::text FROM pg_trigger WHERE tgrelid = c.oid)"
                " FROM pg_class c WHERE c.oid = to_regclass(:v)",
                v=self.view(name),
            )[0]
            for name in VIEWS
        }

    def cost_type(self, relation: str, column: str = "actual_cost_cents") -> str:
        [(found,)] = self.rows(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:r) AND attname = :c",
            r=relation,
            c=column,
        )
        return found


def execute(engine: sa.Engine, script: str) -> None:
    """The `;`-separated statements of `script`, in one transaction."""
    with engine.begin() as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(sa.text(statement))


def _drop_role(conn: sa.Connection, role: str) -> None:
    if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE "{role}"'))


@contextmanager
def app_database(pg_engine: sa.Engine, pg_url: str, folder: Path) -> Iterator[AppDatabase]:
    """Build the application's database in fresh schemas, with the least-privilege role of
    `deploy/least_privilege.sql` and an owner role for the app's views; drop it all after."""
    suffix = uuid.uuid4().hex[:10]
    app, analytics, output = f"t_app_{suffix}", f"t_ana_{suffix}", f"t_out_{suffix}"
    role, owner = f"recon_lp_{suffix}", f"app_owner_{suffix}"
    t = f'"{app}".token_usage'
    try:
        with pg_engine.begin() as conn:
            for schema in (app, analytics):
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(sa.text(f'CREATE ROLE "{owner}" NOLOGIN'))
        create_demo_token_usage(pg_engine, table="demo_source", schema=app)
        summary = generate_demo_data(
            pg_engine, folder, last_day=LAST_DAY, days=2, table="demo_source", schema=app
        )
        execute(pg_engine, APP_TABLE.format(t=t))
        execute(pg_engine, FILL.format(t=t, source=f'"{app}".demo_source'))
        execute(pg_engine, f'DROP TABLE "{app}".demo_source CASCADE')
        execute(pg_engine, EARLIER.format(t=t))
        variables = {
            "role": role,
            "database": sa.make_url(pg_url).database,
            "usage_schema": app,
            "usage_table": "token_usage",
            "output_schema": output,
        }
        execute(pg_engine, ";".join(psql_statements(SCRIPT, variables)))
        execute(
            pg_engine,
            f'GRANT USAGE ON SCHEMA "{app}", "{analytics}" TO "{owner}";'
            f' GRANT SELECT ON {t} TO "{owner}"',
        )
        views = APP_VIEWS.format(
            t=t, app=f'"{app}"', analytics=f'"{analytics}"', role=f'"{role}"', owner=f'"{owner}"'
        )
        with pg_engine.begin() as conn:  # one script: the trigger's body holds semicolons
            conn.execution_options(no_parameters=True).exec_driver_sql(views)
        role_url = sa.make_url(pg_url).set(username=role, password=None)
        yield AppDatabase(
            engine=pg_engine,
            url=pg_url,
            app=app,
            analytics=analytics,
            output=output,
            role=role,
            role_url=role_url.render_as_string(hide_password=False),
            owner=owner,
            demo=SmallDemo(pg_engine, pg_url, app, folder, summary),
        )
    finally:
        with pg_engine.begin() as conn:
            for schema in (output, analytics, app):
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            _drop_role(conn, role)
            _drop_role(conn, owner)
