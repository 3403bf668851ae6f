-- History for analysts (src/history/state.rs): states that time-travel folds leave behind,
-- several per stream, so that a look at any version starts from the nearest one at or
-- before it. A cache: dropping its rows changes no answer.
CREATE TABLE history_snapshots (
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
);
