-- An event whose payload did not fit the type its wait expects is set aside, not consumed
-- by the wait: the reason is kept here (and shown on the run), the wait goes on waiting.
ALTER TABLE events ADD COLUMN rejected text;
