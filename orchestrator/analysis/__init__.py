"""Reading an experiment's folder without Ray: its state, the leaderboard, tables, plots and the CLI
(`python -m orchestrator.analyze`)."""
