"""The one part of the build pyproject.toml cannot say: the Alembic revisions live in
migrations/ at the top of the checkout and install inside the package as
service.db.migrations, so `migrate` needs nothing from the working directory; devtools is
found where the checkout has it (the image copies service/ and migrations/ alone)."""

from setuptools import find_packages, setup

MIGRATIONS = ["service.db.migrations", "service.db.migrations.versions"]

setup(
    packages=find_packages(include=["service*", "devtools*"]) + MIGRATIONS,
    package_dir={"service.db.migrations": "migrations"},
)
