"""The delivery pipeline: `cidemo env` commands and the operations behind them (up, down, promote,
gc, refresh-staging), on top of the environment model, the platforms, databases and backups."""
