-- kflow's durable state. Every table lives in the schema the store was opened with.
-- Times come from the engine's clock (never now()), so virtual time works in tests.

CREATE TABLE definitions (
    name          text        NOT NULL,
    version       integer     NOT NULL,
    signature     text        NOT NULL,
    steps         jsonb       NOT NULL,
    events        jsonb       NOT NULL,
    timeout_s     double precision,
    input_schema  jsonb       NOT NULL,
    output_schema jsonb       NOT NULL,
    registered_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE runs (
    run_id           uuid        PRIMARY KEY,
    idempotency_key  text        UNIQUE,
    workflow_name    text        NOT NULL,
    workflow_version integer,
    signature        text,
    status           text        NOT NULL,
    input            jsonb,
    output           jsonb,
    error            text,
    tenant_id        uuid,
    auth             jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    timeout_s        double precision,
    deadline         timestamptz,
    -- What the run waits for: a time (sleep end, event deadline, retry) and/or an event.
    wake_at          timestamptz,
    waiting_event    text,
    suspend_kind     text,
    segments         integer     NOT NULL DEFAULT 0,
    -- The lease: one executor at a time; every write checks lease_epoch (fencing).
    lease_epoch      bigint      NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz
);
CREATE INDEX runs_due ON runs (wake_at) WHERE status = 'Waiting';
CREATE INDEX runs_status ON runs (status);

CREATE TABLE steps (
    run_id       uuid        NOT NULL REFERENCES runs ON DELETE CASCADE,
    key          text        NOT NULL,
    name         text        NOT NULL,
    kind         text        NOT NULL,
    status       text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    result       jsonb,
    error        text,
    started_at   timestamptz,
    completed_at timestamptz,
    wake_at      timestamptz,
    compensation jsonb,
    seq          integer,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE saved_state (
    run_id uuid  NOT NULL REFERENCES runs ON DELETE CASCADE,
    key    text  NOT NULL,
    value  jsonb,
    PRIMARY KEY (run_id, key)
);

-- The per-run inbox: events are kept until a wait consumes them, each at most once.
CREATE TABLE events (
    id          bigserial   PRIMARY KEY,
    run_id      uuid        NOT NULL REFERENCES runs ON DELETE CASCADE,
    name        text        NOT NULL,
    payload     jsonb,
    dedupe_key  text,
    received_at timestamptz NOT NULL,
    consumed_by text,
    consumed_at timestamptz,
    UNIQUE (run_id, dedupe_key)
);
CREATE INDEX events_pending ON events (run_id, name, id) WHERE consumed_by IS NULL;

CREATE TABLE kv (
    namespace  text        NOT NULL,
    key        text        NOT NULL,
    value      jsonb,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (namespace, key)
);
