-- Schema version 2: what the crash-safe quarantine journal needs beyond version 1.
-- dev/ino/ctime_ns: the inode that was copied, so recovery unlinks the original only if the
--   name still refers to it. restore_to/restore_tmp: the journal of a restore in progress.

ALTER TABLE quarantine ADD COLUMN dev INTEGER;
ALTER TABLE quarantine ADD COLUMN ino INTEGER;
ALTER TABLE quarantine ADD COLUMN ctime_ns INTEGER;
ALTER TABLE quarantine ADD COLUMN restore_to BLOB;
ALTER TABLE quarantine ADD COLUMN restore_tmp BLOB;
CREATE INDEX quarantine_state ON quarantine (state);
