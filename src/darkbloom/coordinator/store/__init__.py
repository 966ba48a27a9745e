"""Persistence: SQLAlchemy async engine, Alembic migrations, and the tables' repositories."""
