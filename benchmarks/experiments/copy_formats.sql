-- Loading a stored 1M-row reconciled_usage again, server-side, from CSV and from
-- PostgreSQL's binary format, with and without its indexes (benchmarks/README.md,
-- "Measured and dropped"). One-off, by hand, on a schema kept by
-- `uv run python -m benchmarks.run --rows 1000000 --keep`:
--
--   psql -h 127.0.0.1 -U postgres test -v schema=bench_1000000 -f benchmarks/experiments/copy_formats.sql
--
-- COPY to and from a server file needs a superuser (or pg_write_server_files).
\timing on
SET search_path = :schema;
COPY reconciled_usage TO '/tmp/recon_copy_formats.csv' (FORMAT csv);
COPY reconciled_usage TO '/tmp/recon_copy_formats.bin' (FORMAT binary);
CREATE TEMP TABLE from_csv (LIKE reconciled_usage INCLUDING ALL);
CREATE TEMP TABLE from_binary (LIKE reconciled_usage INCLUDING ALL);
CREATE TEMP TABLE from_csv_no_indexes (LIKE reconciled_usage);
\echo == CSV, with the two indexes
COPY from_csv FROM '/tmp/recon_copy_formats.csv' (FORMAT csv);
\echo == binary, with the two indexes
COPY from_binary FROM '/tmp/recon_copy_formats.bin' (FORMAT binary);
\echo == CSV, no indexes
COPY from_csv_no_indexes FROM '/tmp/recon_copy_formats.csv' (FORMAT csv);
