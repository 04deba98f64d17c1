-- 0002 (PostgreSQL): an operator may delete a VM while its finished migrations keep their
-- records, so a migration's `vm` names a VM that may no longer exist (no foreign key on it
-- any more). The same change as SQLite's `migrations/0002_vm_delete.sql`, which has to
-- rebuild the table; PostgreSQL drops the constraint (its default name).

ALTER TABLE migrations DROP CONSTRAINT migrations_vm_fkey;
