-- Segment Pods dispatched for a run (pod executor): numbers each Pod's name, so a name is
-- never reused, even after its Pod was deleted.
ALTER TABLE runs ADD COLUMN dispatches integer NOT NULL DEFAULT 0;
