-- Appends no longer lock and update a row per stream: a transaction-scoped advisory lock on
-- the stream's id serializes its writers, and its version is the highest event version
-- (read from events_stream_version_key). The streams table only lists the streams that
-- have events. Rows without events (left by guard appends to streams that never had any)
-- go; so do the version column and the foreign key, whose check locked the stream's row
-- for every event inserted.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_id_fkey;
DELETE FROM streams WHERE version = 0;
ALTER TABLE streams DROP COLUMN version;
