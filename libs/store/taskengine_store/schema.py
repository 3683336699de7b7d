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
ALTER TABLE scheduler_timers ADD COLUMN IF NOT EXISTS concurrency_key text;
CREATE INDEX IF NOT EXISTS scheduler_timers_due ON scheduler_timers (due_at);

-- Scheduled tasks as the scheduler's events say (definition: the TaskDefinition as JSON).
CREATE TABLE IF NOT EXISTS scheduler_tasks (
    task_uuid uuid PRIMARY KEY,
    client text NOT NULL,
    version bigint NOT NULL,
    status text,
    definition jsonb,
    next_fire_at timestamptz,
    created_at timestamptz,
    kind text GENERATED ALWAYS AS (definition->>'schedule_kind') STORED,
    topic text GENERATED ALWAYS AS (definition->>'schedule_expr') STORED
);
CREATE INDEX IF NOT EXISTS scheduler_tasks_due ON scheduler_tasks (next_fire_at)
    WHERE status = 'active';
CREATE INDEX IF NOT EXISTS scheduler_tasks_topic ON scheduler_tasks (client, topic)
    WHERE kind = 'event';
-- Runs asked for (run_now, a published topic), fired on the next tick.
CREATE TABLE IF NOT EXISTS scheduler_requests (
    task_uuid uuid NOT NULL,
    token text NOT NULL,
    trigger text NOT NULL,
    fire_at timestamptz NOT NULL,
    run_id uuid,
    event_id uuid,
    PRIMARY KEY (task_uuid, token)
);
-- The last run started per (client, dedupe_key).
CREATE TABLE IF NOT EXISTS scheduler_dedupe (
    client text NOT NULL,
    dedupe_key text NOT NULL,
    fired_at timestamptz NOT NULL,
    job_id bigint NOT NULL,
    PRIMARY KEY (client, dedupe_key)
);

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
ALTER TABLE admission_queue ADD COLUMN IF NOT EXISTS concurrency_key text;

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
-- The dialect a job came through and what it keeps with it (a work task's type, project...);
-- `executing`: its remote worker reported that it runs.
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS dialect text NOT NULL DEFAULT 'taskengine';
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS attributes jsonb NOT NULL DEFAULT '{}';
ALTER TABLE rm_jobs ADD COLUMN IF NOT EXISTS executing boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS rm_jobs_client_dialect ON rm_jobs (client, dialect, state);

-- The Drove dialect's task ids: one live instance per (client, sourceAppName, taskId); written
-- with the submission (and removed with the deletion) in the same transaction.
CREATE TABLE IF NOT EXISTS drove_task_ids (
    client text NOT NULL,
    source_app text NOT NULL,
    task_id text NOT NULL,
    job_id bigint NOT NULL UNIQUE,
    PRIMARY KEY (client, source_app, task_id)
);

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

CREATE TABLE IF NOT EXISTS rm_tasks (
    task_uuid uuid PRIMARY KEY,
    client text NOT NULL,
    title text,
    description text,
    schedule_kind text,
    schedule_expr text,
    timezone text,
    payload jsonb,
    created_by uuid,
    priority int,
    max_retries int,
    backoff_strategy text,
    dedupe_key text,
    dedupe_window_seconds int,
    concurrency_key text,
    status text NOT NULL,
    next_fire_at timestamptz,
    last_fire_at timestamptz,
    runs int NOT NULL DEFAULT 0,
    skipped int NOT NULL DEFAULT 0,
    snoozed_until timestamptz,
    snooze_reason text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rm_tasks_client_status ON rm_tasks (client, status);
CREATE INDEX IF NOT EXISTS rm_tasks_client_created ON rm_tasks (client, created_at);

-- One row per fired or skipped run; a fired run follows its job (job_version: the job
-- event it reflects). Retention keeps runs.
CREATE TABLE IF NOT EXISTS rm_task_runs (
    run_id uuid PRIMARY KEY,
    task_uuid uuid NOT NULL,
    client text NOT NULL,
    trigger text NOT NULL,
    fire_at timestamptz NOT NULL,
    job_id bigint UNIQUE,
    status text NOT NULL,
    reason text,
    duplicate_of bigint,
    event_id uuid,
    attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL,
    job_version bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rm_task_runs_task ON rm_task_runs (task_uuid, fire_at);

-- Partitioned services (dispatcher, notifier): each of the PARTITIONS partitions of their work
-- is leased to one live instance at a time (`taskengine_store.partitions`).
CREATE TABLE IF NOT EXISTS partition_leases (
    service text NOT NULL,
    partition int NOT NULL,
    holder text,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (service, partition)
);
CREATE TABLE IF NOT EXISTS partition_members (
    service text NOT NULL,
    instance text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, instance)
);

-- Messages a consumer set aside (undecodable, not from the store, or failing the same way N
-- times), kept for inspection: `taskengine events --rejected`, counted in `GET /health`.
-- A set-aside event's position counts as handled: recorded with the tracking record.
CREATE TABLE IF NOT EXISTS rejected_messages (
    id bigserial PRIMARY KEY,
    consumer text NOT NULL,
    stream_seq bigint,
    subject text NOT NULL,
    position bigint,
    msg_id text,
    headers jsonb NOT NULL DEFAULT '{}',
    payload bytea NOT NULL,
    payload_size int NOT NULL,
    error text NOT NULL,
    attempts int NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    UNIQUE (consumer, stream_seq)
);

-- A consumer's tracking record moved forward to `upto` in the transaction it runs in, or
-- the transaction fails (unique_violation) when the record is there already. eventsourcing's
-- own statement returns the row and the caller reads it back, which inside a commit's
-- pipeline is a round trip of its own before the rest of the commit can go.
CREATE OR REPLACE FUNCTION taskengine_track(consumer text, upto bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_tracking VALUES (consumer, upto)
    ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id
    WHERE notification_tracking.notification_id < excluded.notification_id;
    IF NOT FOUND THEN
        RAISE unique_violation USING MESSAGE = format('%s has tracked %s already', consumer, upto);
    END IF;
END $$;

-- The fence of processes of earlier versions, still running during an upgrade: fails the
-- transaction unless backend `holder` still holds the leader lock (`high`, `low`: its key as
-- pg_locks shows it), and holds `commit_key` shared until the transaction ends. A function
-- rather than a DO block, which PostgreSQL compiles again for every commit.
CREATE OR REPLACE FUNCTION taskengine_fence(
    commit_key bigint, holder bigint, high bigint, low bigint, service text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(commit_key);
    IF NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND pid = holder AND classid = high::oid AND objid = low::oid
                   AND objsubid = 1) THEN
        RAISE EXCEPTION '%: this process no longer holds the leader lock', service;
    END IF;
END $$;

-- A leader's fence, as `taskengine_store.leadership` now writes it: fails the transaction
-- unless the leader lock (`leader_key`) is held by some session (`pg_try_...` takes it only if
-- nobody does) and no leader took over since the one whose turn `held` is (each takes the next
-- `leader_epochs` turn before it waits out `commit_key`); holds `commit_key` shared until the
-- transaction ends. Three lock-table lookups and one row, where reading `pg_locks` copied the
-- whole lock table (165 us a commit).
CREATE TABLE IF NOT EXISTS leader_epochs (
    name text PRIMARY KEY,
    epoch bigint NOT NULL
);
CREATE OR REPLACE FUNCTION taskengine_fence_epoch(
    commit_key bigint, leader_key bigint, held bigint, service text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(commit_key);
    IF pg_try_advisory_xact_lock_shared(leader_key)
       OR NOT EXISTS (SELECT FROM leader_epochs WHERE name = service AND epoch = held) THEN
        RAISE EXCEPTION '%: this process no longer holds the leader lock', service;
    END IF;
END $$;
"""

READ_MODELS = ("rm_jobs", "rm_job_log", "rm_clients", "rm_tasks", "rm_task_runs")
"""Tables projected from the event log: emptied by `taskengine replay --reset`, rebuilt and
compared by `taskengine replay`."""
