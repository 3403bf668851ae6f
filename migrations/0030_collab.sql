-- FluxStudio collaborative documents (issue 20).
--
-- The document is its event stream `document-{id}`; these tables only make it fast to read.
-- Snapshots of the Yjs state (lib0 v1 update encoding) at stream versions: loading a
-- document, or travelling back to a version, is one snapshot plus the tail after it.
CREATE TABLE document_snapshots (
    document_id uuid        NOT NULL,
    version     bigint      NOT NULL,
    state       bytea       NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, version)
);

-- The documents of each project (read model `documents`, from DocumentCreated).
CREATE TABLE documents (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    project_id       uuid        NOT NULL,
    name             text        NOT NULL,
    created_by       uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    created_position bigint      NOT NULL
);
CREATE INDEX documents_project ON documents (project_id, created_position);
