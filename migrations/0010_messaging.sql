-- FluxStudio team messaging read models (src/projections/messaging.rs).
CREATE TABLE channels (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    kind             text        NOT NULL,
    name             text,
    topic            text,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    archived_at      timestamptz,
    message_count    bigint      NOT NULL DEFAULT 0,
    last_message_at  timestamptz,
    created_position bigint      NOT NULL,
    version          bigint      NOT NULL
);
CREATE INDEX channels_organization ON channels (organization_id, created_position);

-- Members of private channels and direct conversations.
CREATE TABLE channel_members (
    channel_id uuid NOT NULL,
    user_id    uuid NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members (user_id);

-- `text` is NULL once a message is deleted (the tombstone keeps no text).
CREATE TABLE channel_messages (
    id                uuid        PRIMARY KEY,
    channel_id        uuid        NOT NULL,
    organization_id   uuid        NOT NULL,
    seq               bigint      NOT NULL,
    author_id         uuid        NOT NULL,
    text              text,
    parent_id         uuid,
    reply_count       integer     NOT NULL DEFAULT 0,
    mentions          uuid[]      NOT NULL DEFAULT '{}',
    attachments       jsonb       NOT NULL DEFAULT '[]',
    client_message_id text,
    created_at        timestamptz NOT NULL,
    edited_at         timestamptz,
    deleted_at        timestamptz,
    position          bigint      NOT NULL
) WITH (fillfactor = 85);
CREATE INDEX channel_messages_channel ON channel_messages (channel_id, seq);
CREATE INDEX channel_messages_thread ON channel_messages (parent_id, seq) WHERE parent_id IS NOT NULL;

CREATE TABLE message_reactions (
    message_id uuid NOT NULL,
    emoji      text NOT NULL,
    user_id    uuid NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

CREATE TABLE channel_read_marks (
    channel_id uuid   NOT NULL,
    user_id    uuid   NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);

-- Made from the `notify` list of each message; read state from each user's inbox stream.
CREATE TABLE notifications (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    kind            text        NOT NULL,
    channel_id      uuid        NOT NULL,
    message_id      uuid        NOT NULL,
    actor_id        uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    read_at         timestamptz,
    position        bigint      NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, position DESC);

-- Who is connected to Socket.IO `/messaging`, per server process (ephemeral: rows of a
-- process that stops beating are removed by the others).
CREATE UNLOGGED TABLE messaging_presence (
    process         uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    organization_id uuid        NOT NULL,
    connections     integer     NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (process, user_id, organization_id)
);
CREATE INDEX messaging_presence_org ON messaging_presence (organization_id, user_id);
