-- The write-back's UPDATE against the floor's, with the server's work_mem and with 64 MB
-- (benchmarks/README.md, "Earlier: the write-back's hash join"). One-off, by hand, on a schema
-- seeded by `uv run python -m benchmarks.seed --rows 1000000 --schema bench_x`:
--
--   psql -h 127.0.0.1 -U postgres test -v schema=bench_x -f benchmarks/experiments/write_back_hash_join.sql
--
-- Every UPDATE is rolled back; the staging table is built from token_usage itself.
SET search_path = :schema;
DROP TABLE IF EXISTS stage;
CREATE UNLOGGED TABLE stage AS
SELECT id AS usage_id,
       NULLIF(openai_request_id, '') AS openai_request_id,
       round(calculated_cost_cents, 10)::numeric(24, 10) AS estimated_cost_cents,
       (coalesce(calculated_cost_cents, 0) * 1.1)::numeric(24, 10) AS actual_cost_cents,
       CASE WHEN openai_request_id IS NULL THEN 'unverifiable' ELSE 'matched' END
           AS reconciliation_status
FROM token_usage;
ANALYZE stage;

\set pipeline_update 'WITH changed AS (UPDATE token_usage SET actual_cost_cents = CASE WHEN (NULLIF(token_usage.openai_request_id, \'\') IS NOT DISTINCT FROM r.openai_request_id AND (CASE WHEN abs(token_usage.calculated_cost_cents) < 900000000 THEN round(token_usage.calculated_cost_cents, 10) END) IS NOT DISTINCT FROM r.estimated_cost_cents) THEN r.actual_cost_cents ELSE token_usage.actual_cost_cents END, reconciliation_status = CASE WHEN (NULLIF(token_usage.openai_request_id, \'\') IS NOT DISTINCT FROM r.openai_request_id AND (CASE WHEN abs(token_usage.calculated_cost_cents) < 900000000 THEN round(token_usage.calculated_cost_cents, 10) END) IS NOT DISTINCT FROM r.estimated_cost_cents) THEN r.reconciliation_status ELSE token_usage.reconciliation_status END, reconciled_at = CASE WHEN (NULLIF(token_usage.openai_request_id, \'\') IS NOT DISTINCT FROM r.openai_request_id AND (CASE WHEN abs(token_usage.calculated_cost_cents) < 900000000 THEN round(token_usage.calculated_cost_cents, 10) END) IS NOT DISTINCT FROM r.estimated_cost_cents) THEN now() ELSE token_usage.reconciled_at END FROM stage AS r WHERE token_usage.id = r.usage_id AND (token_usage.actual_cost_cents IS DISTINCT FROM r.actual_cost_cents OR token_usage.reconciliation_status IS DISTINCT FROM r.reconciliation_status) RETURNING (NULLIF(token_usage.openai_request_id, \'\') IS NOT DISTINCT FROM r.openai_request_id) AS applied) SELECT count(*) FILTER (WHERE applied), count(*) FILTER (WHERE NOT applied) FROM changed'
\set floor_update 'UPDATE token_usage AS t SET actual_cost_cents = r.actual_cost_cents, reconciliation_status = r.reconciliation_status, reconciled_at = now() FROM stage AS r WHERE t.id = r.usage_id'

\echo == pipeline UPDATE, server work_mem
VACUUM token_usage; CHECKPOINT;
BEGIN; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :pipeline_update; ROLLBACK;
\echo == floor UPDATE, server work_mem
VACUUM token_usage; CHECKPOINT;
BEGIN; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :floor_update; ROLLBACK;
\echo == pipeline UPDATE, work_mem 64MB
VACUUM token_usage; CHECKPOINT;
BEGIN; SET LOCAL work_mem = '64MB'; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :pipeline_update; ROLLBACK;
\echo == floor UPDATE, work_mem 64MB
VACUUM token_usage; CHECKPOINT;
BEGIN; SET LOCAL work_mem = '64MB'; EXPLAIN (ANALYZE, BUFFERS, WAL, COSTS OFF) :floor_update; ROLLBACK;
\echo == floor UPDATE without the request-id index
VACUUM token_usage; CHECKPOINT;
BEGIN; DROP INDEX token_usage_openai_request_id_idx; EXPLAIN (ANALYZE, COSTS OFF) :floor_update; ROLLBACK;
DROP TABLE stage;
