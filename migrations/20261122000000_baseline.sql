-- Baseline of halol's schema. The platform itself keeps no state in PostgreSQL: queues live in
-- Redis and are rebuildable. The trading tables (symbols, accounts, positions, closes) arrive
-- with their own migrations.
CREATE TABLE halol_schema_baseline (
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
