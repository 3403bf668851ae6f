-- The event log. Positions are assigned by the single writer that holds the `event_head`
-- row lock, so they are gapless and in commit order (see src/store/postgres.rs).
CREATE TABLE events (
    global_position bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_category text        NOT NULL,
    version         bigint      NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_category_position ON events (stream_category, global_position);
CREATE INDEX events_type_position ON events (event_type, global_position);

-- One row: the last assigned global position. Appending transactions lock it first and
-- release it at commit.
CREATE TABLE event_head (
    id            smallint PRIMARY KEY CHECK (id = 1),
    last_position bigint   NOT NULL
);
INSERT INTO event_head (id, last_position) VALUES (1, 0);

CREATE TABLE snapshots (
    stream_id      text        PRIMARY KEY,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkpoints (
    projection text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Answers to commands sent with an Idempotency-Key, so that a retry returns the first answer.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       smallint,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
