"""Orders, fills, positions, balances and an event log in SQL (SQLite or PostgreSQL, one code path).

Decimals are stored as text so both databases round-trip them exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..core.model import Fill, Order, OrderStatus, OrderType, Side, TimeInForce
from ..core.orders import Position

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_ms", BigInteger, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("client_order_id", String(36), primary_key=True),
    Column("symbol", String(20), nullable=False),
    Column("side", String(4), nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("qty", String(40), nullable=False),
    Column("price", String(40)),
    Column("status", String(20), nullable=False),
    Column("exchange_order_id", BigInteger),
    Column("executed_qty", String(40), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("time_in_force", String(3), nullable=False, default="GTC"),
    Column("quote_qty", String(40)),
)

fills = Table(
    "fills",
    metadata,
    Column("symbol", String(20), primary_key=True),
    Column("trade_id", BigInteger, primary_key=True),
    Column("order_id", BigInteger, nullable=False),
    Column("client_order_id", String(36), nullable=False),
    Column("side", String(4), nullable=False),
    Column("price", String(40), nullable=False),
    Column("qty", String(40), nullable=False),
    Column("commission", String(40), nullable=False),
    Column("commission_asset", String(16), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("detail", Text, nullable=False),
)

positions = Table(
    "positions",
    metadata,
    Column("symbol", String(20), primary_key=True),
    Column("qty", String(40), nullable=False),
    Column("avg_price", String(40), nullable=False),
    Column("realized", String(40), nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

balances = Table(
    "balances",
    metadata,
    Column("asset", String(16), primary_key=True),
    Column("free", String(40), nullable=False),
    Column("locked", String(40), nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Per symbol, the exchange order id up to which every order the venue has is also here (set by a
# reconciliation). A database restored from a backup brings back the mark of that time, so the next
# reconciliation reads the venue's orders from there, whatever newer orders were saved since.
order_marks = Table(
    "order_marks",
    metadata,
    Column("symbol", String(20), primary_key=True),
    Column("orders_through", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[orders, fills, events])


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[positions, balances])
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_orders_status ON orders (status)"))


def _v3(conn: Connection) -> None:
    # Order types with a time in force, LIMIT_MAKER (11 chars) and MARKET by quote amount.
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE orders ALTER COLUMN order_type TYPE VARCHAR(16)"))
    existing = {c["name"] for c in inspect(conn).get_columns("orders")}
    if "time_in_force" not in existing:
        conn.execute(text("ALTER TABLE orders ADD COLUMN time_in_force VARCHAR(3) NOT NULL DEFAULT 'GTC'"))
    if "quote_qty" not in existing:
        conn.execute(text("ALTER TABLE orders ADD COLUMN quote_qty VARCHAR(40)"))


def _v4(conn: Connection) -> None:
    # No query filters orders by status (the open set is rebuilt from a full load at start), and the
    # index cost every persist-before-send insert and every status update one more page write.
    conn.execute(text("DROP INDEX IF EXISTS ix_orders_status"))


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[order_marks])


# Append only. Each step runs once, in its own transaction, and is recorded in schema_migrations.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5)
]


# The orders table's columns in order (checked against the table when a Store is built).
_ORDER_COLUMNS = (
    "client_order_id", "symbol", "side", "order_type", "qty", "price", "status", "exchange_order_id",
    "executed_qty", "created_ms", "updated_ms", "reason", "time_in_force", "quote_qty",
)  # fmt: skip


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 2
            # A dead database must fail fast: the order path runs on the event loop.
            kwargs["connect_args"] = {"connect_timeout": 3}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        ins = sqlite.insert if self.engine.dialect.name == "sqlite" else postgresql.insert
        self._insert = ins
        # Statements are built once and executed with parameter dicts: SQLAlchemy then reuses the
        # compiled form. Building `.values(...)` per call recompiles and costs ~10x more.
        self._order_insert = orders.insert()
        self._order_upsert = _upsert(ins, orders, ["client_order_id"])
        self._fill_insert = (
            ins(fills)
            .on_conflict_do_nothing(index_elements=[fills.c.symbol, fills.c.trade_id])
            .returning(fills.c.trade_id)
        )
        self._position_upsert = _upsert(ins, positions, ["symbol"])
        self._balance_upsert = _upsert(ins, balances, ["asset"])
        self._mark_upsert = _upsert(ins, order_marks, ["symbol"])
        self._event_insert = events.insert()
        self._hot: Connection | None = None
        self._hot_dbapi: Any = None  # the driver connection under `_hot`, for the order insert
        self._hot_cursor: Any = None  # and one cursor on it, reused
        # Positional placeholders in the driver's own style (sqlite3 "?", psycopg "%s"): the driver
        # binds a tuple by index, where a dict costs a name lookup per column.
        mark = "?" if self.engine.dialect.name == "sqlite" else "%s"
        cols = [c.name for c in orders.columns]
        assert cols == list(_ORDER_COLUMNS), "the order insert's tuple must follow the table"
        self._raw_order_insert = (
            f"INSERT INTO orders ({', '.join(cols)}) VALUES ({', '.join(mark for _ in cols)})"
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        metadata.create_all(self.engine, tables=[schema_migrations])
        with self.engine.connect() as conn:
            applied = set(conn.execute(select(schema_migrations.c.version)).scalars())
        for version, step in MIGRATIONS:
            if version in applied:
                continue
            with self.engine.begin() as conn:
                step(conn)
                conn.execute(schema_migrations.insert().values(version=version, applied_ms=_now_ms()))
        return MIGRATIONS[-1][0]

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(schema_migrations.c.version).order_by(schema_migrations.c.version.desc())
                ).scalar()
                or 0
            )

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def checkpoint(self) -> None:
        """Fold the SQLite WAL into the database file; called off the hot path (in a thread)."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._drop_hot_cursor()
        if self._hot is not None:
            self._hot.close()
            self._hot = None
        self.engine.dispose()

    # -- orders --------------------------------------------------------------------------------
    @staticmethod
    def _order_values(o: Order) -> tuple:
        """The order as the orders table's columns, in _ORDER_COLUMNS' order (the hot insert binds it
        by position; the enums' plain str values, `.value` is a slower descriptor)."""
        return (
            o.client_order_id,
            o.symbol,
            o.side._value_,
            o.order_type._value_,
            str(o.qty),
            None if o.price is None else str(o.price),
            o.status._value_,
            o.exchange_order_id,
            str(o.executed_qty),
            o.created_ms,
            o.updated_ms,
            o.reason,
            o.time_in_force._value_,
            None if o.quote_qty is None else str(o.quote_qty),
        )

    @classmethod
    def _order_row(cls, o: Order) -> dict[str, Any]:
        return dict(zip(_ORDER_COLUMNS, cls._order_values(o), strict=True))

    def _hot_execute(self, stmt: Any, params: dict[str, Any]) -> Any:
        """Run one statement and commit on a long-lived connection (the order path's latency).

        On any error the connection is dropped, so the next call starts from a fresh one.
        """
        conn = self._hot
        if conn is None:
            conn = self._hot = self.engine.connect()
        try:
            result = conn.execute(stmt, params)
            row = result.first() if result.returns_rows else None
            conn.commit()
            return row
        except Exception:
            self._hot = None
            self._drop_hot_cursor()
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            raise

    def insert_order(self, order: Order) -> None:
        """The one write on the tick-to-order path: a prepared INSERT on the driver connection, committed
        before this returns (the order is durable before it can be sent).

        It runs cold (the process idles between ticks), where every layer costs tens of µs: SQLAlchemy's
        statement machinery, a new cursor per call and bind-by-name are skipped. The driver connection
        is the one under `_hot`, kept checked out, so it stays the same until an error drops both.
        """
        try:
            dbapi, cur = self._hot_driver()
            cur.execute(self._raw_order_insert, self._order_values(order))
            dbapi.commit()
        except Exception:
            conn = self._hot
            self._hot = None
            self._drop_hot_cursor()
            if conn is not None:
                try:
                    conn.invalidate()
                    conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
            raise

    def _hot_driver(self) -> tuple[Any, Any]:
        """The hot connection's driver connection and cursor (opened on first use), with no
        transaction open."""
        dbapi = self._hot_dbapi
        cur = self._hot_cursor
        if dbapi is None or cur is None:
            conn = self._hot
            if conn is None:
                conn = self._hot = self.engine.connect()
            if conn.in_transaction():
                conn.commit()
            dbapi = self._hot_dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            cur = self._hot_cursor = dbapi.cursor()
        elif self._hot is not None and self._hot.in_transaction():
            self._hot.commit()  # a statement of _hot_execute left open: never mix it into ours
        return dbapi, cur

    def rehearse_insert(self, order: Order) -> bool:
        """Run insert_order's INSERT and roll it back, so its code and pages are in the CPU's caches at
        the next real one (service/keep_warm.py). SQLite only: elsewhere it would cost the database
        server a round trip per call. Only with no transaction open on the hot connection (it opens
        it if need be, as the first real insert would); an error is ignored here (the real insert
        reports its own). True if it ran."""
        if self.dialect != "sqlite" or (self._hot is not None and self._hot.in_transaction()):
            return False  # (a statement of _hot_execute left open is committed by its owner, not here)
        try:
            dbapi, cur = self._hot_driver()
        except Exception:  # noqa: BLE001 - the real insert will meet (and report) the same problem
            return False
        if dbapi.in_transaction:
            return False
        try:
            cur.execute(self._raw_order_insert, self._order_values(order))
        except Exception:  # noqa: BLE001 - see above
            pass
        finally:
            try:
                dbapi.rollback()
            except Exception:  # noqa: BLE001
                pass
        return True

    def _drop_hot_cursor(self) -> None:
        cur = self._hot_cursor
        self._hot_cursor = self._hot_dbapi = None
        if cur is not None:
            try:
                cur.close()
            except Exception:  # noqa: BLE001 - its connection may be gone already
                pass

    def save_order(self, order: Order) -> None:
        self._hot_execute(self._order_upsert, self._order_row(order))

    def load_orders(self) -> list[Order]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(orders)).mappings().all()
        return [
            Order(
                client_order_id=r["client_order_id"],
                symbol=r["symbol"],
                side=Side(r["side"]),
                order_type=OrderType(r["order_type"]),
                qty=Decimal(r["qty"]),
                price=Decimal(r["price"]) if r["price"] is not None else None,
                status=OrderStatus(r["status"]),
                exchange_order_id=r["exchange_order_id"],
                executed_qty=Decimal(r["executed_qty"]),
                created_ms=r["created_ms"],
                updated_ms=r["updated_ms"],
                reason=r["reason"] or "",
                time_in_force=TimeInForce(r["time_in_force"] or "GTC"),
                quote_qty=Decimal(r["quote_qty"]) if r["quote_qty"] is not None else None,
            )
            for r in rows
        ]

    # -- fills ---------------------------------------------------------------------------------
    def insert_fill(self, fill: Fill) -> bool:
        """Insert once per (symbol, trade id); returns False for a duplicate."""
        row = {
            "symbol": fill.symbol,
            "trade_id": fill.trade_id,
            "order_id": fill.order_id,
            "client_order_id": fill.client_order_id,
            "side": fill.side.value,
            "price": str(fill.price),
            "qty": str(fill.qty),
            "commission": str(fill.commission),
            "commission_asset": fill.commission_asset,
            "time_ms": fill.time_ms,
        }
        # RETURNING yields a row only when the insert happened (rowcount is driver-dependent).
        return self._hot_execute(self._fill_insert, row) is not None

    def load_fills(self) -> list[Fill]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(fills).order_by(fills.c.symbol, fills.c.trade_id)).mappings().all()
        return [
            Fill(
                symbol=r["symbol"],
                trade_id=r["trade_id"],
                order_id=r["order_id"],
                client_order_id=r["client_order_id"],
                side=Side(r["side"]),
                price=Decimal(r["price"]),
                qty=Decimal(r["qty"]),
                commission=Decimal(r["commission"]),
                commission_asset=r["commission_asset"],
                time_ms=r["time_ms"],
            )
            for r in rows
        ]

    def max_trade_id(self, symbol: str) -> int | None:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            return conn.execute(select(func.max(fills.c.trade_id)).where(fills.c.symbol == symbol)).scalar()

    # -- positions, balances, events -----------------------------------------------------------
    def save_position(self, symbol: str, pos: Position) -> None:
        row = {
            "symbol": symbol,
            "qty": str(pos.qty),
            "avg_price": str(pos.avg_price),
            "realized": str(pos.realized),
            "updated_ms": _now_ms(),
        }
        self._hot_execute(self._position_upsert, row)

    def save_balances(self, values: dict[str, tuple[Decimal, Decimal]]) -> None:
        now = _now_ms()
        with self.engine.begin() as conn:
            for asset, (free, locked) in values.items():
                row = {"asset": asset, "free": str(free), "locked": str(locked), "updated_ms": now}
                conn.execute(self._balance_upsert, row)

    def load_balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(balances)).mappings().all()
        return {r["asset"]: (Decimal(r["free"]), Decimal(r["locked"])) for r in rows}

    def save_orders_through(self, symbol: str, exchange_order_id: int) -> None:
        row = {"symbol": symbol, "orders_through": exchange_order_id, "updated_ms": _now_ms()}
        with self.engine.begin() as conn:
            conn.execute(self._mark_upsert, row)

    def load_orders_through(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(order_marks)).mappings().all()
        return {r["symbol"]: r["orders_through"] for r in rows}

    def log_event(self, kind: str, detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self._event_insert,
                {"ts_ms": _now_ms(), "kind": kind, "detail": orjson.dumps(detail, default=str).decode()},
            )

    def load_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(events).order_by(events.c.id)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{"kind": r["kind"], "ts_ms": r["ts_ms"], "detail": orjson.loads(r["detail"])} for r in rows]


def _upsert(ins: Any, table: Table, keys: list[str]) -> Any:
    stmt = ins(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL + NORMAL: durable across process crashes, fast enough for persist-before-send.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    # Checkpoints (which fsync) run from the engine's maintenance loop, not inside an order's commit.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()
