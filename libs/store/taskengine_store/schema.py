"""The engine's own tables beside eventsourcing's `stored_events` and `notification_tracking`.

Service tables hold a consumer's working state and are written in the same transaction as its
tracking record. `rm_*` tables are read models: projections of the event log, rebuildable.
"""

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS job_id_seq;

CREATE TABLE IF NOT EXISTS scheduler_timers (
    job_uuid uuid PRIMARY KEY,
    job_id bigint NOT NULL,
    client text NOT NULL,
    workflow text NOT NULL,
    priority int NOT NULL,
    version bigint NOT NULL,
    due_at timestamptz NOT NULL,
    reason text NOT NULL,
    attempts int NOT NULL DEFAULT 0
);
ALTER TABLE scheduler_timers ADD COLUMN IF NOT EXISTS semaphore_url text;
CREATE INDEX IF NOT EXISTS scheduler_timers_due ON scheduler_timers (due_at);

CREATE TABLE IF NOT EXISTS admission_queue (
    job_uuid uuid PRIMARY KEY,
    job_id bigint NOT NULL,
    client text NOT NULL,
    workflow text NOT NULL,
    priority int NOT NULL,
    version bigint NOT NULL,
    queued_at timestamptz NOT NULL,
    admitted boolean NOT NULL DEFAULT false,
    attempt int NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS dispatcher_executions (
    job_uuid uuid PRIMARY KEY,
    job_id bigint NOT NULL,
    client text NOT NULL,
    workflow text NOT NULL,
    priority int NOT NULL,
    attempt int NOT NULL,
    version bigint NOT NULL,
    instance text NOT NULL,
    callbacks jsonb NOT NULL DEFAULT '[]',
    started_at timestamptz NOT NULL
);
ALTER TABLE dispatcher_executions ADD COLUMN IF NOT EXISTS custom_data jsonb;

CREATE TABLE IF NOT EXISTS notifier_deliveries (
    id uuid PRIMARY KEY,
    job_id bigint NOT NULL,
    url text NOT NULL,
    event text NOT NULL,
    body bytea NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS rm_jobs (
    job_uuid uuid PRIMARY KEY,
    job_id bigint NOT NULL UNIQUE,
    client text NOT NULL,
    workflow text NOT NULL,
    priority int NOT NULL,
    state text NOT NULL,
    attempt int NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    run_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_jobs_client_state ON rm_jobs (client, state);
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS parameters jsonb NOT NULL DEFAULT '{}';
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS persist boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS rm_jobs_client_created ON rm_jobs (client, created_at);
-- When the job first reached a final state; retention clears by it.
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS finished_at timestamptz;
CREATE INDEX IF NOT EXISTS rm_jobs_finished ON rm_jobs (finished_at)
    WHERE finished_at IS NOT NULL AND NOT persist;

CREATE TABLE IF NOT EXISTS rm_job_log (
    id bigint PRIMARY KEY,
    job_id bigint NOT NULL,
    severity int NOT NULL,
    progname text NOT NULL,
    message text NOT NULL,
    created_at timestamptz NOT NULL,
    task_id int NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_job_log_job ON rm_job_log (job_id, id);

CREATE TABLE IF NOT EXISTS rm_clients (
    name text PRIMARY KEY,
    key_hash text NOT NULL,
    key_lookup text NOT NULL,
    key_hint text NOT NULL,
    admin boolean NOT NULL,
    registered_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_clients_lookup ON rm_clients (key_lookup);
-- Set by a revocation, cleared by the next registration: a revoked client's key is refused.
ALTER TABLE rm_clients ADD COLUMN IF NOT EXISTS revoked_at timestamptz;
"""

READ_MODELS = ("rm_jobs", "rm_job_log", "rm_clients")
