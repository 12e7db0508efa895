-- Appends no longer lock and update a row per stream: the unique (stream_id, version) key
-- stops a concurrent writer of the same version, and a stream's version is its highest
-- event version (read from events_stream_version_key). The streams table only lists the streams that
-- have events. Rows without events (left by guard appends to streams that never had any)
-- go; so do the version column and the foreign key, whose check locked the stream's row
-- for every event inserted.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_id_fkey;
DELETE FROM streams WHERE version = 0;
ALTER TABLE streams DROP COLUMN version;
