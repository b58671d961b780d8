-- Leases and fencing (several instances on PostgreSQL): each claim stamps
-- the row with the term of the lease it was claimed under, and every later
-- write about its enforcement is made only while the row still carries
-- that term. On SQLite one daemon holds every bucket under term 0, so the
-- column only keeps both backends' queue operations alike.
ALTER TABLE sessions ADD COLUMN claim_term INTEGER NOT NULL DEFAULT 0;
