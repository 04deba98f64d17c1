-- 0004: the shared migration budget. A host may be drained (it takes no new VMs); a
-- migration carries its part in the budget (priority, submission time, dirtying estimate,
-- grant, place in the queue) as JSON, read whole. Rows written before have neither: a host
-- is not drained, a migration's part is the default.

ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0 CHECK (draining IN (0, 1));
ALTER TABLE migrations ADD COLUMN budget TEXT;  -- JSON Share
