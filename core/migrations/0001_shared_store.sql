-- luna-matcher's shared store: lists, faces (the descriptor as bytea with its
-- version), list membership, and the change log every instance follows.
-- Triggers fill the log in the writing transaction, so rows written by any
-- tool (psql included) are followed too.

CREATE TABLE lists (
    list_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id  uuid NOT NULL,
    user_data   text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE faces (
    face_id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id         uuid NOT NULL,
    descriptor_version integer NOT NULL,
    descriptor         bytea NOT NULL,
    external_id        text,
    user_data          text NOT NULL DEFAULT '',
    create_time        timestamptz NOT NULL DEFAULT now()
);

-- `attached` orders a face's lists as they were attached.
CREATE TABLE list_faces (
    list_id  uuid NOT NULL REFERENCES lists ON DELETE CASCADE,
    face_id  uuid NOT NULL REFERENCES faces ON DELETE CASCADE,
    attached bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (list_id, face_id)
);
CREATE INDEX list_faces_by_face ON list_faces (face_id);

-- One row per changed row: kind 'l' (a list, id = list_id), 'f' (a face,
-- id = face_id), 'm' (a membership, id = face_id, list_id), 'r' (a table was
-- truncated: reload). Ordered by (xid, seq). Readers take only rows of
-- transactions older than their snapshot's xmin, which have all finished: a
-- transaction that commits late is never skipped, whatever its seq.
CREATE SEQUENCE change_seq;
CREATE TABLE change_log (
    xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq     bigint NOT NULL DEFAULT nextval('change_seq'),
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind    "char" NOT NULL,
    id      uuid NOT NULL,
    list_id uuid,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX change_log_by_age ON change_log (at);

-- The last position trimmed from the log: an instance behind it reloads.
CREATE TABLE change_log_trimmed (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid xid8 NOT NULL,
    seq bigint NOT NULL
);
INSERT INTO change_log_trimmed (xid, seq) VALUES ('0', 0);

CREATE FUNCTION log_list_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO change_log (kind, id) SELECT 'l', list_id FROM old_rows;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO change_log (kind, id) SELECT 'l', list_id FROM new_rows;
    END IF;
    PERFORM pg_notify('luna_matcher_changes', '');
    RETURN NULL;
END $$;

CREATE FUNCTION log_face_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO change_log (kind, id) SELECT 'f', face_id FROM old_rows;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO change_log (kind, id) SELECT 'f', face_id FROM new_rows;
    END IF;
    PERFORM pg_notify('luna_matcher_changes', '');
    RETURN NULL;
END $$;

-- A membership deleted with its list or its face (a cascade: the parent is
-- gone when this runs) is implied by the parent's own change; a list delete
-- may cascade to millions of them.
CREATE FUNCTION log_membership_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO change_log (kind, id, list_id) SELECT 'm', face_id, list_id FROM old_rows;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO change_log (kind, id, list_id)
        SELECT 'm', o.face_id, o.list_id FROM old_rows o
        JOIN lists l ON l.list_id = o.list_id JOIN faces f ON f.face_id = o.face_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO change_log (kind, id, list_id) SELECT 'm', face_id, list_id FROM new_rows;
    END IF;
    PERFORM pg_notify('luna_matcher_changes', '');
    RETURN NULL;
END $$;

CREATE FUNCTION log_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (kind, id) VALUES ('r', '00000000-0000-0000-0000-000000000000');
    PERFORM pg_notify('luna_matcher_changes', '');
    RETURN NULL;
END $$;

-- Statement triggers with transition tables: one log insert per statement,
-- however many rows it writes (a bulk import is one statement).
CREATE TRIGGER lists_inserted AFTER INSERT ON lists REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_list_changes();
CREATE TRIGGER lists_updated AFTER UPDATE ON lists REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_list_changes();
CREATE TRIGGER lists_deleted AFTER DELETE ON lists REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_list_changes();
CREATE TRIGGER faces_inserted AFTER INSERT ON faces REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_face_changes();
CREATE TRIGGER faces_updated AFTER UPDATE ON faces REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_face_changes();
CREATE TRIGGER faces_deleted AFTER DELETE ON faces REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_face_changes();
CREATE TRIGGER list_faces_inserted AFTER INSERT ON list_faces REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_membership_changes();
CREATE TRIGGER list_faces_updated AFTER UPDATE ON list_faces REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_membership_changes();
CREATE TRIGGER list_faces_deleted AFTER DELETE ON list_faces REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION log_membership_changes();
CREATE TRIGGER lists_truncated AFTER TRUNCATE ON lists FOR EACH STATEMENT EXECUTE FUNCTION log_truncate();
CREATE TRIGGER faces_truncated AFTER TRUNCATE ON faces FOR EACH STATEMENT EXECUTE FUNCTION log_truncate();
CREATE TRIGGER list_faces_truncated AFTER TRUNCATE ON list_faces FOR EACH STATEMENT EXECUTE FUNCTION log_truncate();
