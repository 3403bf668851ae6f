-- Events a projection could not apply (src/projections/parked.rs). The runner writes a row in
-- the same transaction that moves the projection's checkpoint past the event, so a parked
-- event is never lost and never blocks the events after it.
--
-- state: `parked` (open: the read model lacks this event), `skipped` (an operator chose to
-- leave it out; kept for the record), `applied` (a retry or a later rebuild applied it).
CREATE TABLE parked_events (
    projection  text        NOT NULL,
    position    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    stream_id   text        NOT NULL,
    event_type  text        NOT NULL,
    error       text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    state       text        NOT NULL DEFAULT 'parked'
                CHECK (state IN ('parked', 'skipped', 'applied')),
    resolved_at timestamptz,
    resolved_by uuid,
    note        text,
    PRIMARY KEY (projection, position)
);
CREATE INDEX parked_events_position ON parked_events (position, projection);
