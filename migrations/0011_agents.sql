-- ToolboxAI agent read models. `task_executions`, `agent_instances` and `agent_metrics` are
-- written only by the projection in src/projections/agents.rs (an execution is a swarm task
-- of type `agent`); `circuit_breaker_state` and `circuit_breaker_resets` by each server
-- process for its own provider breakers (src/agents/breakers.rs), since a breaker is a
-- process's view of a provider, not a fact of the log.

-- One row per execution: its input, where it stands, what it cost and what it produced.
CREATE TABLE task_executions (
    id                uuid        PRIMARY KEY,
    organization_id   uuid        NOT NULL,
    user_id           uuid        NOT NULL,
    agent_type        text        NOT NULL,
    task_type         text        NOT NULL,
    model             text        NOT NULL,
    task_data         jsonb       NOT NULL,
    status            text        NOT NULL,
    attempt           integer     NOT NULL DEFAULT 0,
    calls             integer     NOT NULL DEFAULT 0,
    refusals          integer     NOT NULL DEFAULT 0,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    output            jsonb,
    error             text,
    -- Why the last output was refused by its schema, if one was.
    last_refusal      text,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    duration_ms       bigint,
    created_position  bigint      NOT NULL UNIQUE,
    last_position     bigint      NOT NULL
);
CREATE INDEX task_executions_org ON task_executions (organization_id, created_position DESC);
CREATE INDEX task_executions_org_agent
    ON task_executions (organization_id, agent_type, created_position DESC);
CREATE INDEX task_executions_durations
    ON task_executions (organization_id, agent_type, finished_at DESC)
    WHERE status = 'completed';

-- Each agent across the deployment: executions running and waiting now.
CREATE TABLE agent_instances (
    agent_type     text        PRIMARY KEY,
    status         text        NOT NULL,
    running        integer     NOT NULL DEFAULT 0,
    queued         integer     NOT NULL DEFAULT 0,
    last_active_at timestamptz
);

-- Per organization and agent: counts and tokens (durations are read from task_executions).
CREATE TABLE agent_metrics (
    organization_id   uuid   NOT NULL,
    agent_type        text   NOT NULL,
    executions        bigint NOT NULL DEFAULT 0,
    completed         bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    cancelled         bigint NOT NULL DEFAULT 0,
    calls             bigint NOT NULL DEFAULT 0,
    refusals          bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, agent_type)
);

-- Each process's view of each provider breaker, refreshed every beat; rows not refreshed for
-- three beats belong to a process that is gone.
CREATE TABLE circuit_breaker_state (
    name            text        NOT NULL,
    process         uuid        NOT NULL,
    state           text        NOT NULL,
    failure_count   integer     NOT NULL,
    opened_at       timestamptz,
    next_probe_at   timestamptz,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (name, process)
);

-- Resets asked for by admins; every process applies each one it has not applied yet.
CREATE TABLE circuit_breaker_resets (
    id              bigserial   PRIMARY KEY,
    name            text        NOT NULL,
    requested_by    uuid        NOT NULL,
    organization_id uuid,
    requested_at    timestamptz NOT NULL DEFAULT now()
);
