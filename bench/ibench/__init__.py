"""bench/run's pieces: process launchers, load generators, sanity checks and the report."""
