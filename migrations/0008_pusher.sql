-- The Pusher Channels gateway (src/gateways/pusher.rs). Ephemeral state shared by the server
-- processes of one deployment; nothing here is an event and nothing here is replayed.

-- Server processes that hold Pusher sockets, with their last heartbeat. A process that stops
-- beating is swept with its subscriptions (and its presence members are announced gone).
CREATE TABLE pusher_nodes (
    node     uuid        PRIMARY KEY,
    seen_at  timestamptz NOT NULL DEFAULT now()
);

-- Every subscription of every live socket, for the channels API and for presence. `user_id`
-- and `user_info` are set on presence channels only (from the signed channel_data).
CREATE TABLE pusher_subscriptions (
    socket_id  text  NOT NULL,
    channel    text  NOT NULL,
    node       uuid  NOT NULL REFERENCES pusher_nodes (node) ON DELETE CASCADE,
    user_id    text,
    user_info  jsonb,
    PRIMARY KEY (socket_id, channel)
);
CREATE INDEX pusher_subscriptions_channel ON pusher_subscriptions (channel, user_id);
CREATE INDEX pusher_subscriptions_node ON pusher_subscriptions (node);

-- Who authorized which (socket, private or presence channel) through POST /pusher/auth, so
-- that the process holding the socket (maybe another one) can cut the subscription when that
-- session ends or the user leaves the organization. Short-lived: read once at subscribe time.
CREATE TABLE pusher_grants (
    socket_id        text        NOT NULL,
    channel          text        NOT NULL,
    user_id          uuid        NOT NULL,
    session_id       uuid        NOT NULL,
    organization_id  uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (socket_id, channel)
);
CREATE INDEX pusher_grants_created ON pusher_grants (created_at);

-- Messages too large for a NOTIFY payload (8000 bytes): the notification carries the id.
CREATE TABLE pusher_messages (
    id          bigserial   PRIMARY KEY,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pusher_messages_created ON pusher_messages (created_at);
