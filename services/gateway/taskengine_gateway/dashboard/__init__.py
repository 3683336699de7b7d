"""The dashboard at `/ui`: static pages served from this package (`static/`, no build step) and
the few reads they need that no dialect's route gives (`api.py`), with live updates over
`/ui/ws` (`feed.py`). It signs in with a client's key, like any API caller, and shows that
client's data; an admin client sees every client's."""
