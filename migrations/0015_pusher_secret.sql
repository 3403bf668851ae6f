-- The Pusher app secret of a development deployment started without PUSHER_SECRET
-- (src/gateways/pusher.rs): random, made by the first process that needs it, and read by
-- every other process on the database, so that a subscription signed by one process's
-- POST /pusher/auth is accepted by the process holding the socket. At most one row.
CREATE TABLE pusher_generated_secret (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
