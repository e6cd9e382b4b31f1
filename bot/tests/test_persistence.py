"""Same code path against SQLite and a real PostgreSQL (parametrized via the db_url fixture)."""

from __future__ import annotations

from decimal import Decimal as D

from sqlalchemy import inspect

from rampart_bot.adapters.persistence import MIGRATIONS, Store
from rampart_bot.core.model import Fill, Order, OrderStatus, OrderType, Side
from rampart_bot.core.orders import Position


def _order(cid: str = "rb-1") -> Order:
    return Order(
        cid, "BTCUSDT", Side.BUY, OrderType.LIMIT, D("0.00123"), D("30000.01"), created_ms=1, updated_ms=1
    )


def test_migrations_are_versioned_and_idempotent(db_url: str) -> None:
    store = Store(db_url)
    try:
        assert store.migrate() == MIGRATIONS[-1][0]
        assert store.migrate() == MIGRATIONS[-1][0]  # second run applies nothing
        assert store.schema_version() == MIGRATIONS[-1][0]
        tables = set(inspect(store.engine).get_table_names())
        assert {"orders", "fills", "events", "positions", "balances", "schema_migrations"} <= tables
        # Nothing queries orders by status: an index there only made each persist-before-send dearer.
        assert "ix_orders_status" not in {i["name"] for i in inspect(store.engine).get_indexes("orders")}
        assert store.ping()
    finally:
        store.close()


def test_order_round_trip_keeps_decimals_exact(store: Store) -> None:
    order = _order()
    store.insert_order(order)
    order.status = OrderStatus.PARTIALLY_FILLED
    order.exchange_order_id = 42
    order.executed_qty = D("0.00100")
    store.save_order(order)
    (loaded,) = store.load_orders()
    assert loaded.client_order_id == "rb-1"
    assert loaded.status is OrderStatus.PARTIALLY_FILLED
    assert loaded.price == D("30000.01") and loaded.qty == D("0.00123")
    assert loaded.executed_qty == D("0.00100") and loaded.exchange_order_id == 42


def test_fill_inserted_once_per_trade_id(store: Store) -> None:
    fill = Fill("BTCUSDT", 7, 42, "rb-1", Side.BUY, D("1.5"), D("0.1"), D("0"), "BTC", 5)
    assert store.insert_fill(fill) is True
    assert store.insert_fill(fill) is False
    assert [f.trade_id for f in store.load_fills()] == [7]
    assert store.max_trade_id("BTCUSDT") == 7


def test_positions_balances_and_events(store: Store) -> None:
    store.save_position("BTCUSDT", Position(D("0.5"), D("100"), D("3")))
    store.save_position("BTCUSDT", Position(D("0.7"), D("101"), D("3")))
    store.save_balances({"BTC": (D("1"), D("0.5"))})
    store.save_balances({"BTC": (D("2"), D("0"))})
    assert store.load_balances() == {"BTC": (D("2"), D("0"))}
    store.log_event("kill_switch", {"reason": "test", "amount": D("1.5")})
    (event,) = store.load_events("kill_switch")
    assert event["detail"] == {"reason": "test", "amount": "1.5"}
