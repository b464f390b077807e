-- Who holds the leader lease: sessions with a granted advisory lock on the key in this database.  A bigint key
-- shows in pg_locks as its high half in classid and its low half in objid, with objsubid 1.
-- pg_stat_activity shows every role the pid, application_name and user name of other sessions (the rest
-- only to members of their role or of pg_read_all_stats); a session gone meanwhile has NULLs there.
SELECT l.pid, a.application_name::text AS application_name, a.usename::text AS role
FROM pg_catalog.pg_locks AS l
LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.granted
  AND l.objsubid = 1
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database())
  AND l.classid::bigint = (%(key)s::bigint >> 32) & 4294967295
  AND l.objid::bigint = %(key)s::bigint & 4294967295
ORDER BY l.pid
