"""The Task Engine dialect (`/job`, `/jobs`, seed 002): the engine's own API over the job model.

`submission` makes a submitted job (and a rerun) through the one factory, `status` names the
canonical states as the seed's queue states and their numbers, `view` shows a job as the seed
does. Parsing its request fields and planning `PATCH /jobs/<id>` stay with its controller, in
the gateway, which words their refusals as HTTP answers.
"""

DIALECT = "taskengine"
"""The `dialect` of a job submitted through the Task Engine API."""
