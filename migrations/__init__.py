"""The Alembic revisions `wavespeed-jobs migrate` runs, shipped inside the package so that it
runs from any install and any working directory (service/db/engine.py configures Alembic)."""
