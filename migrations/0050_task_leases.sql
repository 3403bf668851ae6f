-- Work spread over every process (see src/tasks/mod.rs).
--
-- The scheduler's leader admits a task by inserting its lease: the attempt the task is to
-- run next, with no owner. A worker of any process with a free slot claims it
-- (`FOR UPDATE SKIP LOCKED`), records the attempt's start with its owner, heartbeats the
-- row while it runs and deletes it when the task ends. The caps (global, per organization,
-- per user) count these rows, so they hold over every process. A lease whose heartbeat is
-- older than `WORKER_LEASE_SECS` is rescued by the leader: the attempt is recorded as
-- interrupted and the row deleted, and the task is admitted again.
--
-- The task's events stay the truth: the lease only says who runs its current attempt.
CREATE TABLE task_leases (
    task_id         uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    user_id         uuid NOT NULL,
    attempt         integer NOT NULL,
    admitted_seq    bigserial NOT NULL,
    admitted_at     timestamptz NOT NULL DEFAULT now(),
    owner           text,
    claimed_at      timestamptz,
    heartbeat_at    timestamptz
);

-- Workers claim the oldest unclaimed admission first.
CREATE INDEX task_leases_unclaimed ON task_leases (admitted_seq) WHERE owner IS NULL;
CREATE INDEX task_leases_owner ON task_leases (owner) WHERE owner IS NOT NULL;

-- The process that runs (or ran) the current attempt, from `SwarmTaskStarted.worker`.
ALTER TABLE swarm_tasks ADD COLUMN worker text;
ALTER TABLE task_executions ADD COLUMN worker text;
