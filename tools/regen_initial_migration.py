"""Regenerate inventory/migrations/versions/0001_initial.py from the models.

Until the first release the schema history is squashed into one initial revision; after it, new
revisions are added with `alembic revision --autogenerate` instead and this script is retired.
"""

from __future__ import annotations

import tempfile

from alembic import command
from alembic.config import Config

from inventory.db import MIGRATIONS, make_engine


def main() -> None:
    for old in (MIGRATIONS / "versions").glob("*.py"):
        old.unlink()
    engine = make_engine(f"sqlite:///{tempfile.mkdtemp()}/gen.db")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")
    for generated in (MIGRATIONS / "versions").glob("0001*.py"):
        generated.rename(MIGRATIONS / "versions" / "0001_initial.py")


if __name__ == "__main__":
    main()
