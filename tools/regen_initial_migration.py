"""Regenerate inventory/migrations/versions/0001_initial.py from the models (pre-release squash)."""
import sys, tempfile
from pathlib import Path
from alembic import command
from alembic.config import Config
from inventory.db import make_engine, MIGRATIONS

for old in (MIGRATIONS / "versions").glob("*.py"):
    old.unlink()
tmp = tempfile.mkdtemp()
engine = make_engine(f"sqlite:///{tmp}/gen.db")
cfg = Config(); cfg.set_main_option("script_location", str(MIGRATIONS))
with engine.begin() as conn:
    cfg.attributes["connection"] = conn
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
for f in (MIGRATIONS / "versions").glob("0001*.py"):
    f.rename(MIGRATIONS / "versions" / "0001_initial.py")
