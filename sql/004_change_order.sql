-- Change numbers in commit order. A sequence hands out numbers at insert, but rows become visible at
-- commit, so without this a follower could see change 8 before change 7 commits, and either skip 7
-- or have to guess how long to wait for it. Each transaction that records a change first takes this
-- transaction-level advisory lock, held until it commits or rolls back: the next one can take a
-- number only after that, so numbers become visible in increasing order (gaps are only rollbacks),
-- and "everything after the last number seen" is exact. It serialises only the tail of the
-- transactions that record changes (revocations, suspensions, renewals, re-enrollments), not
-- first enrollments or lookups.
CREATE FUNCTION next_registry_change_seq() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(7215004212);
  RETURN nextval('registry_changes_seq_seq');
END $$;
ALTER TABLE registry_changes ALTER COLUMN seq SET DEFAULT next_registry_change_seq();
