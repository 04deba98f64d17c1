-- 0004 (PostgreSQL): the shared migration budget; the same change as SQLite's
-- `migrations/0004_budget.sql`.

ALTER TABLE hosts ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE migrations ADD COLUMN budget TEXT;  -- JSON Share
