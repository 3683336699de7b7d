"""The dialects the gateway speaks, one controller module each (`<dialect>_api`), with the
helpers only that dialect uses beside it (`taskengine_*` serve the Task Engine dialect, seed
002). What every dialect shares (bodies, the error table, job I/O, auth, quotas) lives one
level up, in `taskengine_gateway`."""
