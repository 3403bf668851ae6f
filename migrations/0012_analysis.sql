-- The analysis service's read models (src/projections/analysis.rs) and the migration
-- feature flags of the legacy routes (src/projections/flags.rs). Written only by those
-- projections.

-- One row per analysis (a swarm task of type `analysis`): where it stands and its results.
CREATE TABLE analyses (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    title            text        NOT NULL,
    questions        jsonb       NOT NULL,
    model            text,
    -- The documents' names and sizes (their text stays in the log).
    documents        jsonb       NOT NULL,
    status           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    created_position bigint      NOT NULL UNIQUE,
    attempt          integer     NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    done             bigint      NOT NULL DEFAULT 0,
    total            bigint      NOT NULL,
    current_document text,
    results          jsonb,
    insights         bigint      NOT NULL DEFAULT 0,
    error            text,
    version          bigint      NOT NULL,
    last_position    bigint      NOT NULL
);
CREATE INDEX analyses_org ON analyses (organization_id, created_position DESC);

-- Insights, from the AI step or saved by users, in the order they were recorded.
CREATE TABLE analysis_insights (
    analysis_id uuid        NOT NULL,
    insight_id  uuid        NOT NULL,
    position    bigint      NOT NULL,
    source      text        NOT NULL,
    user_id     uuid,
    model       text,
    text        text        NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (analysis_id, insight_id)
);
CREATE INDEX analysis_insights_order ON analysis_insights (analysis_id, position);

-- The current mode of each flag that ever changed (a route without a row is `legacy`).
CREATE TABLE feature_flags (
    route       text        PRIMARY KEY,
    mode        text        NOT NULL,
    actor       text        NOT NULL,
    user_id     uuid,
    changed_at  timestamptz NOT NULL,
    version     bigint      NOT NULL,
    position    bigint      NOT NULL
);

-- Every change of every flag: the history `GET /api/v1/system/flags` shows.
CREATE TABLE feature_flag_changes (
    position    bigint      PRIMARY KEY,
    route       text        NOT NULL,
    from_mode   text        NOT NULL,
    to_mode     text        NOT NULL,
    actor       text        NOT NULL,
    user_id     uuid,
    reason      text,
    error_rate  double precision,
    requests    bigint,
    at          timestamptz NOT NULL
);
CREATE INDEX feature_flag_changes_route ON feature_flag_changes (route, position DESC);
