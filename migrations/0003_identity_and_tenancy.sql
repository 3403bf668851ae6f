-- Identity read models (src/projections/identity.rs) and building ownership.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL,
    email_lower   text        NOT NULL,
    display_name  text        NOT NULL,
    roles         text[]      NOT NULL DEFAULT '{}',
    active        boolean     NOT NULL DEFAULT true,
    registered_at timestamptz NOT NULL,
    version       bigint      NOT NULL
);
CREATE INDEX users_email_lower ON users (email_lower);

CREATE TABLE organizations (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    created_by uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    frontends  text[]      NOT NULL DEFAULT '{}',
    version    bigint      NOT NULL
);

CREATE TABLE memberships (
    organization_id uuid   NOT NULL,
    user_id         uuid   NOT NULL,
    role            text   NOT NULL,
    joined_position bigint NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, joined_position);

ALTER TABLE buildings ADD COLUMN organization_id uuid;
CREATE INDEX buildings_organization ON buildings (organization_id, created_position);
