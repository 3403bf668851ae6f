-- The reply workers that run now, each refreshed by its process every few seconds: a
-- streaming reply whose row is missing or stale lost its worker with its process, and any
-- process fails it as interrupted (src/chat.rs).
CREATE TABLE chat_reply_workers (
    reply_id uuid        PRIMARY KEY,
    process  uuid        NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_reply_workers_process ON chat_reply_workers (process);
-- The sweep reads the streaming replies only.
CREATE INDEX chat_messages_streaming ON chat_messages (created_at) WHERE status = 'streaming';
