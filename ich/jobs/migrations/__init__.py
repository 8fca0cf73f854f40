"""alembic migrations of the job store (run by ``ich.jobs.migrate``)."""
