-- FluxStudio files. The read models (src/projections/files.rs): files, file_versions,
-- file_grants, file_links. No foreign keys: a rebuild swaps the tables of the projection
-- together. The other tables are kept by the upload and download paths themselves (they
-- describe content in the object store and uploads in progress, not the log).
CREATE TABLE files (
    id                uuid        PRIMARY KEY,
    organization_id   uuid        NOT NULL,
    project_id        uuid,
    name              text        NOT NULL,
    current_version   integer     NOT NULL,
    sha256            text        NOT NULL,
    size              bigint      NOT NULL,
    mime_type         text        NOT NULL,
    sniffed_mime_type text,
    created_by        uuid        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deleted_at        timestamptz,
    created_position  bigint      NOT NULL,
    version           bigint      NOT NULL
);
-- An organization's (or a project's) files, newest first, keyset on the creation position.
CREATE INDEX files_by_org ON files (organization_id, created_position DESC);
CREATE INDEX files_by_project ON files (project_id, created_position DESC) WHERE project_id IS NOT NULL;

CREATE TABLE file_versions (
    file_id           uuid        NOT NULL,
    version           integer     NOT NULL,
    sha256            text        NOT NULL,
    size              bigint      NOT NULL,
    mime_type         text        NOT NULL,
    sniffed_mime_type text,
    uploaded_by       uuid        NOT NULL,
    uploaded_at       timestamptz NOT NULL,
    restored_from     integer,
    PRIMARY KEY (file_id, version)
);
-- The retention sweep asks whether any live version still names a content.
CREATE INDEX file_versions_by_sha ON file_versions (sha256);

CREATE TABLE file_grants (
    file_id      uuid NOT NULL,
    grantee_kind text NOT NULL,
    grantee_id   uuid NOT NULL,
    access       text NOT NULL,
    PRIMARY KEY (file_id, grantee_kind, grantee_id)
);
CREATE INDEX file_grants_by_grantee ON file_grants (grantee_id);

CREATE TABLE file_links (
    id            uuid        PRIMARY KEY,
    file_id       uuid        NOT NULL,
    expires_at    timestamptz NOT NULL,
    max_downloads bigint,
    created_by    uuid        NOT NULL,
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX file_links_by_file ON file_links (file_id);

-- Content committed to the object store, by SHA-256. `committed_at` is refreshed by every
-- upload of the same content, so the sweep never takes content an upload has just counted on.
CREATE TABLE file_blobs (
    sha256       text        PRIMARY KEY,
    size         bigint      NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- Downloads through each share link, counted atomically across processes.
CREATE TABLE file_link_downloads (
    link_id   uuid   PRIMARY KEY,
    downloads bigint NOT NULL DEFAULT 0
);

-- tus uploads in progress. Any process may take the next PATCH: the offset lives here and
-- the received bytes in the object store (one segment object per stretch of bytes).
CREATE TABLE file_uploads (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    project_id      uuid,
    -- The file the upload makes a version of; fixed at creation, so that finishing the
    -- upload twice (a retry) records one version.
    file_id         uuid        NOT NULL,
    -- A new version of an existing file rather than a new file.
    existing        boolean     NOT NULL,
    filename        text        NOT NULL,
    filetype        text        NOT NULL,
    upload_length   bigint      NOT NULL,
    upload_offset   bigint      NOT NULL DEFAULT 0,
    -- Set once the upload became a version of its file.
    completed       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX file_uploads_expiry ON file_uploads (expires_at);

-- The segments of a tus upload, in order. A segment counts once its row is here (written in
-- the transaction that moves the offset); objects of a PATCH that lost a race are swept
-- with the upload.
CREATE TABLE file_upload_segments (
    upload_id uuid   NOT NULL,
    start     bigint NOT NULL,
    size      bigint NOT NULL,
    key       text   NOT NULL,
    PRIMARY KEY (upload_id, start)
);

-- The key that signs share links when FILE_LINK_SECRET is not set: made once per database,
-- so every process of a deployment signs and checks links alike.
CREATE TABLE file_link_key (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea   NOT NULL
);
