"""Reading an experiment's folder without Ray (`python -m orchestrator.analyze`), one module per job:
`experiment` (what a folder holds), `read` (reading it), `state` (finished, running or interrupted),
`leaderboard` (trial status, ranking and the table, shared with `orchestrator.sweep.chain`), `trials` (the
leaderboard rows of a folder), `report` (the other text sections), `outputs` (the files written), `plots` and
`figures` (the PNGs) and `cli` (the command)."""
