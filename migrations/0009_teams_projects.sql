-- FluxStudio teams and projects read models (src/projections/fluxstudio.rs). The tables
-- follow the legacy FluxStudio names (teams, team_members, projects, project_members,
-- project_milestones). No foreign keys: a rebuild swaps the tables of the projection together.
CREATE TABLE teams (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    name             text        NOT NULL,
    description      text,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    archived_at      timestamptz,
    member_count     integer     NOT NULL DEFAULT 0,
    created_position bigint      NOT NULL,
    version          bigint      NOT NULL
);
-- An organization's teams, newest first, with the creation position as keyset cursor.
CREATE INDEX teams_by_org ON teams (organization_id, created_position DESC);

CREATE TABLE team_members (
    team_id          uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    role             text        NOT NULL,
    joined_position  bigint      NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_by_user ON team_members (user_id);

CREATE TABLE projects (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    team_id          uuid,
    name             text        NOT NULL,
    description      text,
    status           text        NOT NULL,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    member_count     integer     NOT NULL DEFAULT 0,
    milestone_count  integer     NOT NULL DEFAULT 0,
    created_position bigint      NOT NULL,
    version          bigint      NOT NULL
);
CREATE INDEX projects_by_org ON projects (organization_id, created_position DESC);
CREATE INDEX projects_by_team ON projects (team_id) WHERE team_id IS NOT NULL;

CREATE TABLE project_members (
    project_id       uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    joined_position  bigint      NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_by_user ON project_members (user_id);

CREATE TABLE project_milestones (
    id               uuid        PRIMARY KEY,
    project_id       uuid        NOT NULL,
    title            text        NOT NULL,
    due_date         date,
    completed_at     timestamptz,
    added_position   bigint      NOT NULL
);
CREATE INDEX project_milestones_by_project ON project_milestones (project_id, added_position);
