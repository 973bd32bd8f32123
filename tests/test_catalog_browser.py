"""Cache Management in the real dashboard (streamlit run, Debian's chromium): an admin turns a function
into a cache in two clicks (pick it, Register), changes its duration, sees it on the other pages, and
removes it; a bad duration is refused in a red box with its reason, never a traceback.

Screenshots go to tests/artifacts/catalog_*.png.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.browser import ARTIFACTS, admin_page, assert_clean, open_page, settle

pytestmark = pytest.mark.browser

FUNCTION = """
CREATE FUNCTION public.get_product_order_count(p_product_id bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
  SELECT jsonb_build_array(jsonb_build_object('product_id', p_product_id, 'orders', count(*)))
  FROM orders WHERE p_product_id IS NULL OR product_id = p_product_id
$$;
COMMENT ON FUNCTION public.get_product_order_count(bigint) IS 'Orders per product';
"""
CACHE = "product_order_count"


def catalog_row(url: str):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT description, sources, duration_override FROM public.cache_catalog "
                            "WHERE cache_name = %s", (CACHE,)).fetchone()


@pytest.fixture(scope="module")
def db_with_function(server):
    with psycopg.connect(server["db"], autocommit=True) as conn:
        conn.execute(FUNCTION)
    return server["db"]


def choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page, "Cache Management")


def success_text(page) -> str:
    box = page.locator('[data-testid="stAlertContentSuccess"]').first
    box.wait_for(timeout=30_000)
    return box.inner_text()


def test_an_admin_registers_retimes_and_removes_a_cache(server, browser, db_with_function):
    url = db_with_function
    with admin_page(browser, server, "catalog_register", height=2600) as page:
        open_page(page, "Cache Management", "Cache Management")
        # The function is offered with the sources its argument suggests; one click registers it.
        # The demo's own uncached function is offered too; pick ours.
        choose(page, "Function", "public.get_product_order_count(bigint)")
        sources = page.get_by_role("textbox", name="Source tables (TABLE or TABLE:KEY_COLUMN, comma-separated)")
        assert sources.input_value() == "public.orders:product_id, public.products:id"
        page.get_by_role("button", name="Register cache").click()
        assert "Registered cache product_order_count" in success_text(page)
        settle(page, "Cache Management")
        assert_clean(page, "after registering")
        description, registered_sources, _ = catalog_row(url)
        assert description == "Orders per product"
        assert {s["table"] for s in registered_sources} == {"public.orders", "public.products"}
        assert "Product order count" in page.locator("body").inner_text()
        page.screenshot(path=str(ARTIFACTS / "catalog_registered.png"), full_page=True)

        # A bad duration is refused with the accepted forms; a good one is applied for every caller.
        choose(page, "Cache to re-time", "Product order count")
        page.get_by_label("New duration").fill("5x")
        page.get_by_role("button", name="Set duration").click()
        error = page.locator('[data-testid="stAlertContentError"]').first
        error.wait_for(timeout=30_000)
        assert "is not a duration" in error.inner_text() and "Traceback" not in page.locator("body").inner_text()
        settle(page, "Cache Management")
        page.get_by_label("New duration").fill("45m")
        page.get_by_role("button", name="Set duration").click()
        assert "now keeps results for 45m" in success_text(page)
        assert catalog_row(url)[2].total_seconds() == 45 * 60
        settle(page, "Cache Management")

        # It shows on the other pages with no code change.
        open_page(page, "Performance Analysis", "Performance Analysis")
        assert "Product order count hit rate" in page.locator("body").inner_text()
        page.screenshot(path=str(ARTIFACTS / "catalog_performance.png"), full_page=True)

        open_page(page, "Cache Management", "Cache Management")
        choose(page, "Cache to remove", "Product order count")
        remove = page.get_by_role("button", name="Remove cache")
        assert remove.is_disabled()  # not before the confirmation is ticked
        page.get_by_text(f"Yes, remove {CACHE}").click()
        remove.click()
        assert "Removed cache product_order_count" in success_text(page)
        assert catalog_row(url) is None
