-- Swarm task read models (Quantum Swarm runs, Velocity Swarm batches). Written only by the
-- projection in src/projections/swarm.rs. The legacy `swarm_tasks` columns (id, user_id,
-- type, objective, config, status, created_at) keep their names.
CREATE TABLE swarm_tasks (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    type             text        NOT NULL,
    objective        text        NOT NULL,
    config           jsonb       NOT NULL,
    status           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    created_position bigint      NOT NULL UNIQUE,
    attempt          integer     NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Optimization: the latest best point; batch: the counts.
    iteration        bigint      NOT NULL DEFAULT 0,
    best_cost        double precision,
    best_position    jsonb,
    evaluations      bigint      NOT NULL DEFAULT 0,
    total            bigint      NOT NULL DEFAULT 0,
    done             bigint      NOT NULL DEFAULT 0,
    failed           bigint      NOT NULL DEFAULT 0,
    result           jsonb,
    error            text,
    version          bigint      NOT NULL,
    last_position    bigint      NOT NULL
);
CREATE INDEX swarm_tasks_org ON swarm_tasks (organization_id, created_position DESC);
-- The scheduler's scan: what waits or runs, oldest first.
CREATE INDEX swarm_tasks_pending ON swarm_tasks (created_position)
    WHERE status IN ('queued', 'running', 'interrupted');

-- One row per progress event: the series a chart draws.
CREATE TABLE swarm_progress (
    task_id     uuid        NOT NULL,
    position    bigint      NOT NULL,
    attempt     integer     NOT NULL,
    iteration   bigint,
    best_cost   double precision,
    evaluations bigint,
    done        bigint,
    failed      bigint,
    at          timestamptz NOT NULL,
    PRIMARY KEY (task_id, position)
);

-- The outcome of each subtask of a batch.
CREATE TABLE swarm_subtasks (
    task_id     uuid    NOT NULL,
    index       integer NOT NULL,
    status      text    NOT NULL,
    attempts    integer NOT NULL,
    output      jsonb,
    error       text,
    duration_ms bigint  NOT NULL,
    position    bigint  NOT NULL,
    PRIMARY KEY (task_id, index)
);
