-- Rows of the outbox and of processed_messages are inserted in commit order by the one writer,
-- so their ids follow their times: retention finds what is old from the front of the table,
-- and two indexes that every group commit had to update are no longer needed.
DROP INDEX outbox_created_at;
DROP INDEX processed_messages_processed_at;
