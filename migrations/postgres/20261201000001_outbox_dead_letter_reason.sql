-- An outbox message the broker refused for good is marked with why, instead of being published;
-- retention keeps such rows, the only full copy of the message, for an operator.
ALTER TABLE outbox ADD COLUMN dead_letter_reason TEXT;
