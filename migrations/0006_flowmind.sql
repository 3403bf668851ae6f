-- FlowMind chat read models (src/projections/flowmind.rs). The legacy `chat_sessions`
-- field names (id, user_id, title, model_id, created_at) are kept.
CREATE TABLE chat_sessions (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    title            text        NOT NULL,
    model_id         text        NOT NULL,
    system_prompt    text,
    archived_at      timestamptz,
    message_count    integer     NOT NULL DEFAULT 0,
    prompt_tokens    bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint     NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    created_position bigint      NOT NULL,
    version          bigint      NOT NULL
);
-- Listing a user's sessions, newest first, with the creation position as keyset cursor.
CREATE INDEX chat_sessions_owner ON chat_sessions (organization_id, user_id, created_position DESC);

-- Every message of every branch. `seq` is the log position of the event that recorded it,
-- so messages list in the order they happened.
CREATE TABLE chat_messages (
    id                uuid        PRIMARY KEY,
    session_id        uuid        NOT NULL,
    organization_id   uuid        NOT NULL,
    parent_id         uuid,
    role              text        NOT NULL,
    content           text        NOT NULL DEFAULT '',
    status            text        NOT NULL,
    model_id          text,
    provider          text,
    finish_reason     text,
    error_class       text,
    error_message     text,
    prompt_tokens     bigint,
    completion_tokens bigint,
    created_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    seq               bigint      NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX chat_messages_session ON chat_messages (session_id, seq);

-- Tokens per organization per day and model, for billing dashboards.
CREATE TABLE ai_usage_daily (
    organization_id   uuid   NOT NULL,
    day               date   NOT NULL,
    model_id          text   NOT NULL,
    replies           bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, day, model_id)
);
