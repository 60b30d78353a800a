"""Citus' rules hold for every SQL statement of the repository (no services: parsed with
pglast, PostgreSQL's own parser).

A real Citus 13.2.2 cluster refused four of our statements (docs/scale.md): a volatile
function in an upsert's ``DO UPDATE SET`` on a distributed table, an aggregate without
``GROUP BY`` in a ``LATERAL`` subquery, an anonymous ``row()`` coming back from a shard. The
rules below are what it taught, checked on every migration, every statement the code builds
from the stream catalogue (exposed as constants), and every string constant of
``collector/`` and ``api/`` that parses as SQL; with the placement as data, so a unique key
without the distribution column or a later migration changing a distribution column's type
is caught before it meets a cluster.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest
from pglast import ast as A
from pglast import enums as E
from pglast import parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor

from api.queries import analytics
from collector.ingest import store
from collector.ingest.booking import sql as booking
from collector.readmodel import fleet, sessions
from collector.settlement import energy

REPO = pathlib.Path(__file__).resolve().parent.parent
#: The distributed tables and their distribution column (sql/011_citus.sql).
DIST = {
    "meter_readings": "meter_id",
    "meter_current": "meter_id",
    "meter_hourly": "meter_id",
    "vehicle_readings": "vehicle_id",
    "vehicle_current": "vehicle_id",
    "vehicle_hourly": "vehicle_id",
    "register_devices": "device_id",
}
#: The migration that distributes them: later ones run on a distributed schema.
CITUS_MIGRATION = 11
NOT_IMMUTABLE = {"now", "clock_timestamp", "statement_timestamp", "random", "nextval"}
AGGREGATES = {"sum", "count", "min", "max", "avg", "array_agg", "percentile_disc"}


def nodes(tree: object) -> list[object]:
    found: list[object] = []

    class Every(Visitor):  # type: ignore[misc]
        def visit(self, ancestors: object, node: object) -> None:
            found.append(node)

    Every()(tree)
    return found


def generated() -> Iterator[tuple[str, str]]:
    """The statements built from the stream catalogue, by name."""
    yield "store.WRITE_BATCH_SQL", store.WRITE_BATCH_SQL
    yield "booking.WRITE_REGISTERS_SQL", booking.WRITE_REGISTERS_SQL
    yield "booking.DIRTY_SQL", booking.DIRTY_SQL
    for name in ("WRITE_STAYING_SQL", "STATES_SQL", "ROW_SQL", "ROLLUPS_SQL"):
        for stream, sql in getattr(booking, name).items():
            yield f"booking.{name}[{stream}]", sql
    for stream, statements in booking.REBOOKED_SQL.items():
        for i, sql in enumerate(statements):
            yield f"booking.REBOOKED_SQL[{stream}][{i}]", sql
    for name in ("METER_WINDOW", "VEHICLE_WINDOW", "PERFORMANCE"):
        yield f"analytics.{name}", getattr(analytics, name)
    yield "fleet.FLEET", fleet.FLEET
    yield "sessions.SESSION_SELECT", sessions.SESSION_SELECT + " WHERE s.id = $1"
    for key, sql in {**energy.ENERGY_SQL, **energy.RATES_SQL}.items():
        yield f"energy[{key}]", sql


def constants() -> Iterator[tuple[str, str]]:
    """Every string constant of collector/ and api/ that parses as SQL."""
    for f in sorted([*REPO.glob("collector/**/*.py"), *REPO.glob("api/**/*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.strip()
                if len(text) < 12 or text.split()[0].upper() not in (
                    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "CREATE", "ALTER",
                ):  # fmt: skip
                    continue
                try:
                    parse_sql(text)
                except ParseError:
                    continue  # a fragment of a statement built with an f-string
                yield f"{f.relative_to(REPO)}:{node.lineno}", text


def migrations() -> Iterator[tuple[str, str]]:
    for f in sorted((REPO / "sql").glob("0*.sql")):
        yield f.name, f.read_text()


class Rules(Visitor):  # type: ignore[misc]
    def __init__(self, after_citus: bool = False) -> None:
        super().__init__()
        self.after_citus = after_citus
        self.broken: list[str] = []

    def visit_CreateStmt(self, ancestors: object, node: A.CreateStmt) -> None:
        """A primary or unique key of a distributed table holds its distribution column."""
        column = DIST.get(node.relation.relname)
        if column is None:
            return
        unique = (E.ConstrType.CONSTR_PRIMARY, E.ConstrType.CONSTR_UNIQUE)
        for element in node.tableElts or ():
            if isinstance(element, A.Constraint):  # PRIMARY KEY (a, b)
                keys, constraint = [k.sval for k in element.keys or ()], element
            elif isinstance(element, A.ColumnDef):  # a column's own PRIMARY KEY
                keys = [element.colname]
                own = (c for c in element.constraints or () if c.contype in unique)
                constraint = next(own, None)
            else:
                continue
            if constraint is not None and constraint.contype in unique and column not in keys:
                self.broken.append(f"{node.relation.relname}: a unique key without {column}")

    def visit_InsertStmt(self, ancestors: object, node: A.InsertStmt) -> None:
        """``DO UPDATE SET`` on a distributed table: IMMUTABLE functions only."""
        conflict = node.onConflictClause
        if conflict is None or node.relation.relname not in DIST:
            return
        for n in nodes(conflict.targetList or ()):
            if isinstance(n, A.FuncCall) and n.funcname[-1].sval in NOT_IMMUTABLE:
                self.broken.append(f"{n.funcname[-1].sval}() in ON CONFLICT DO UPDATE SET")

    def visit_RowExpr(self, ancestors: object, node: A.RowExpr) -> None:
        """An anonymous composite cannot come back from a shard."""
        if any(isinstance(a, A.SubLink) for a in ancestors):
            self.broken.append("an anonymous row() in a subquery")

    def visit_RangeSubselect(self, ancestors: object, node: A.RangeSubselect) -> None:
        """An aggregate without GROUP BY in a LATERAL subquery cannot be pushed down."""
        q = node.subquery
        if (
            node.lateral
            and isinstance(q, A.SelectStmt)
            and not q.groupClause
            and any(
                isinstance(n, A.FuncCall) and n.funcname[-1].sval in AGGREGATES
                for n in nodes(q.targetList)
            )
        ):
            self.broken.append("an aggregate without GROUP BY in a LATERAL subquery")

    def visit_AlterTableStmt(self, ancestors: object, node: A.AlterTableStmt) -> None:
        """After the Citus migration, a distribution column's type stays."""
        column = DIST.get(node.relation.relname)
        if not (self.after_citus and column):
            return
        for cmd in node.cmds or ():
            if cmd.subtype == E.AlterTableType.AT_AlterColumnType and cmd.name == column:
                self.broken.append(f"{node.relation.relname}.{column}: its type changed")


def _check(sql: str, *, after_citus: bool = False) -> list[str]:
    rules = Rules(after_citus)
    rules(parse_sql(sql))
    return rules.broken


ALL = [*migrations(), *generated(), *constants()]


def test_the_statements_are_found() -> None:
    assert len(ALL) > 80, [w for w, _ in ALL]


@pytest.mark.parametrize(("where", "sql"), ALL, ids=[w for w, _ in ALL])
def test_statement_keeps_citus_rules(where: str, sql: str) -> None:
    after = where[:3].isdigit() and int(where[:3]) > CITUS_MIGRATION
    assert _check(sql, after_citus=after) == [], where


@pytest.mark.parametrize(
    ("sql", "broken"),
    [
        ("INSERT INTO meter_current AS c (meter_id) VALUES ('a') ON CONFLICT (meter_id) "
         "DO UPDATE SET updated_at = now()", "now() in ON CONFLICT DO UPDATE SET"),
        ("SELECT (SELECT row(ts, kwh_consumed_ac) FROM meter_readings LIMIT 1)",
         "an anonymous row() in a subquery"),
        ("SELECT a.n FROM pieces p CROSS JOIN LATERAL (SELECT count(*) AS n FROM meter_hourly r "
         "WHERE r.meter_id = p.meter_id) a", "an aggregate without GROUP BY in a LATERAL subquery"),
        ("CREATE TABLE meter_hourly (meter_id text, hour timestamptz, id bigint PRIMARY KEY)",
         "meter_hourly: a unique key without meter_id"),
    ],
)  # fmt: skip
def test_each_rule_catches_what_citus_refused(sql: str, broken: str) -> None:
    assert _check(sql) == [broken]


def test_a_later_migration_may_not_change_a_distribution_column() -> None:
    sql = "ALTER TABLE meter_current ALTER COLUMN meter_id TYPE varchar(64)"
    assert _check(sql, after_citus=True) == ["meter_current.meter_id: its type changed"]
    assert _check(sql) == []  # before distribution (003 does this) it is fine
