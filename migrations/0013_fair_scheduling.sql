-- The scheduler ranks the tasks that wait or run per organization (every organization's
-- first before anyone's second), and admission counts an organization's waiting tasks:
-- both read this index rather than every pending task in creation order.
CREATE INDEX swarm_tasks_pending_org ON swarm_tasks (organization_id, created_position)
    WHERE status IN ('queued', 'running', 'interrupted');
