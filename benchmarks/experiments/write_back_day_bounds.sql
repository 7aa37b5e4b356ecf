-- One day's write-back UPDATE on a table holding many days, without and with the day's
-- created_at bounds (benchmarks/README.md, "Now: timestamps as text", measured and dropped).
-- One-off, by hand, on a schema seeded by
-- `uv run python -m benchmarks.seed --rows 10000 --days 31 --schema bench_bf31`
-- (and `--days 365 --schema bench_y365` for the year):
--
--   psql -h 127.0.0.1 -U postgres test -v schema=bench_bf31 -v day=2026-11-01 \
--        -f benchmarks/experiments/write_back_day_bounds.sql
--
-- Both UPDATEs are rolled back; the staging table is built from the day's own rows.
SET search_path = :schema;
DROP TABLE IF EXISTS stage;
CREATE UNLOGGED TABLE stage AS
SELECT id AS usage_id,
       NULLIF(openai_request_id, '') AS openai_request_id,
       (coalesce(calculated_cost_cents, 0) * 1.1)::numeric(24, 10) AS actual_cost_cents,
       CASE WHEN openai_request_id IS NULL THEN 'unverifiable' ELSE 'matched' END
           AS reconciliation_status
FROM token_usage
WHERE created_at >= :'day'::date AND created_at < :'day'::date + 1;
ANALYZE stage;

\set update 'UPDATE token_usage SET actual_cost_cents = r.actual_cost_cents, reconciliation_status = r.reconciliation_status, reconciled_at = now() FROM stage AS r WHERE token_usage.id = r.usage_id AND (token_usage.actual_cost_cents IS DISTINCT FROM r.actual_cost_cents OR token_usage.reconciliation_status IS DISTINCT FROM r.reconciliation_status)'
\set bounds ' AND token_usage.created_at >= ' :'day' '::date AND token_usage.created_at < ' :'day' '::date + 1'

\echo == the join alone: every row of the table is a candidate
VACUUM token_usage; CHECKPOINT;
BEGIN; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :update; ROLLBACK;
\echo == with the created_at bounds of the day
VACUUM token_usage; CHECKPOINT;
BEGIN; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :update :bounds; ROLLBACK;
DROP TABLE stage;
