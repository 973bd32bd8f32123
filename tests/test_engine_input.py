"""Bad input to the public SQL functions.

Every public function validates its arguments and raises SQLSTATE 22023
(invalid_parameter_value) with the offending parameter named in the message.
Values that cannot even become the parameter's type fail before the function
runs, with PostgreSQL's own codes:

  22003  numeric_value_out_of_range   an integer beyond int4 (days, p_limit) or int8 (ids)
  22007  invalid_datetime_format      text that is not an interval ('soon', 'DROP TABLE')
  22008  datetime_field_overflow      an interval field out of range ('999999999999 years')
  22015  interval_field_overflow      an interval out of range
  22P02  invalid_text_representation  (text given for a number; not produced here: numbers are sent as numbers)

The property tests (hypothesis) feed random values into every public function that
takes arguments; each call succeeds or fails with 22023 (or one of the codes above
where the value cannot be the type), and a failed call changes nothing: query_cache
(count and checksum) and the audit log are as before.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True

TOKEN = "EMERGENCY_CLEAR_CONFIRMED"
CACHES = ["expert_sessions", "product_performance"]
INT4 = (-(2**31), 2**31 - 1)
INT8 = (-(2**63), 2**63 - 1)
UNPARSABLE = {"22003", "22007", "22008", "22015", "22P02"}


@pytest.fixture(scope="module")
def conn(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute("SELECT public.get_expert_sessions_with_stats_cached(1, '1 hour')")
        connection.execute("SELECT public.get_product_performance_cached(1, '1 hour')")
        yield connection


def state(conn):
    """What a failed call must not change."""
    return conn.execute("""
        SELECT (SELECT count(*) FROM public.query_cache),
               (SELECT md5(COALESCE(string_agg(q::text, '|' ORDER BY cache_key), '')) FROM public.query_cache q),
               (SELECT count(*) FROM cache_private.maintenance_audit),
               (SELECT count(*) FROM public.cache_cleanup_log)""").fetchone()


def sqlstate_of(conn, sql, params):
    try:
        conn.execute(sql, params).fetchall()
        return None
    except psycopg.Error as exc:
        return exc.sqlstate, str(exc)


def expect_invalid(conn, sql, params, *words):
    before = state(conn)
    outcome = sqlstate_of(conn, sql, params)
    assert outcome is not None, f"{sql} {params} succeeded"
    code, message = outcome
    assert code == "22023", message
    for word in words:
        assert word in message, message
    assert state(conn) == before


# --- the documented errors, one by one -------------------------------------------------------------

BAD_DURATIONS = ["0 seconds", "-5 minutes", None, "367 days", "366 days 1 second", "1 year 7 days", "13 mons",
                 "1 day -25 hours", "-1 microsecond"]


@pytest.mark.parametrize("function", ["get_expert_sessions_with_stats_cached", "get_product_performance_cached"])
@pytest.mark.parametrize("duration", BAD_DURATIONS)
def test_bad_durations(conn, function, duration):
    expect_invalid(conn, f"SELECT public.{function}(1, %s::interval)", [duration], "p_cache_duration")


@pytest.mark.parametrize("duration", ["366 days", "12 mons 6 days", "1 microsecond", "1 year"])
def test_durations_at_the_edges_are_accepted(conn, duration):
    sql = "SELECT public.get_expert_sessions_with_stats_cached(2, %s::interval)"
    data = conn.execute(sql, [duration]).fetchone()[0]
    assert data == conn.execute("SELECT public.get_expert_sessions_with_stats(2)").fetchone()[0]


@pytest.mark.parametrize("function", ["get_expert_sessions_with_stats_cached", "get_product_performance_cached",
                                      "get_expert_sessions_with_stats", "get_product_performance"])
@pytest.mark.parametrize("ident", [0, -1, -(2**63)])
def test_ids_must_be_positive(conn, function, ident):
    expect_invalid(conn, f"SELECT public.{function}(%s::bigint)", [ident], "_id must be a positive")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.get_cache_cleanup_stats(%s::integer)",
    "SELECT * FROM public.get_cache_hit_rate_series(%s::integer, 'day')",
    "SELECT * FROM public.get_cache_load_reduction_series(%s::integer, 'day')",
    "SELECT * FROM public.get_cache_fallback_usage(%s::integer)",
])
@pytest.mark.parametrize("days", [0, -1, 3651, None, INT4[1], INT4[0]])
def test_days_outside_1_to_3650(conn, sql, days):
    expect_invalid(conn, sql, [days], "days", "1 to 3650")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.get_cache_hit_rate_series(7, %s)",
    "SELECT * FROM public.get_cache_load_reduction_series(7, %s)",
])
@pytest.mark.parametrize("bucket", ["month", "HOUR", "", None, "hour'; DROP TABLE public.query_cache; --", "minute",
                                    "x" * 5000])
def test_bucket_must_be_hour_day_or_week(conn, sql, bucket):
    expect_invalid(conn, sql, [bucket], "bucket must be hour, day or week")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.get_cache_hit_rate_series(7, 'day', %s)",
    "SELECT * FROM public.get_top_cache_entries(10, 'hits', %s)",
    "SELECT public.invalidate_cache(%s)",
    "SELECT public.record_cache_fallback(%s, 'why')",
])
@pytest.mark.parametrize("name", ["nope", "Expert_Sessions", "expert_sessions ", "", "'; DROP TABLE x; --",
                                  "%", "ü" * 3000])
def test_unknown_cache_names_list_the_known_caches(conn, sql, name):
    expect_invalid(conn, sql, [name], "unknown cache name", "known caches: expert_sessions, product_performance")


def test_record_cache_fallback_needs_a_cache_name(conn):
    expect_invalid(conn, "SELECT public.record_cache_fallback(NULL, 'why')", None, "unknown cache name")


@pytest.mark.parametrize("limit", [0, -1, 10001, None, INT4[1]])
def test_top_entries_limit(conn, limit):
    expect_invalid(conn, "SELECT * FROM public.get_top_cache_entries(%s::integer)", [limit], "p_limit",
                   "1 to 10000")


@pytest.mark.parametrize("order_by", ["HITS", "random()", "hits; DROP TABLE x", None, "", "cache_key"])
def test_top_entries_order_by(conn, order_by):
    expect_invalid(conn, "SELECT * FROM public.get_top_cache_entries(10, %s)", [order_by], "p_order_by")


def test_top_entries_search_length(conn):
    expect_invalid(conn, "SELECT * FROM public.get_top_cache_entries(10, 'hits', NULL, %s)", ["s" * 201], "p_search")
    assert conn.execute("SELECT count(*) FROM public.get_top_cache_entries(10, 'hits', NULL, %s)",
                        ["s" * 200]).fetchone()[0] == 0


@pytest.mark.parametrize("args", [(None, None), ("expert_sessions", "expert_sessions:1")])
def test_invalidate_cache_needs_exactly_one_argument(conn, args):
    expect_invalid(conn, "SELECT public.invalidate_cache(%s, %s)", list(args), "exactly one of p_cache_name or "
                   "p_cache_key")


@pytest.mark.parametrize("key", ["", "k" * 1001, "ü" * 1001, "x" * 100_000])
def test_invalidate_cache_key_length(conn, key):
    expect_invalid(conn, "SELECT public.invalidate_cache(NULL, %s)", [key], "p_cache_key must be 1 to 1000 characters")


@pytest.mark.parametrize("token", [None, "", "emergency_clear_confirmed", TOKEN + " ", " " + TOKEN, TOKEN + "\n",
                                   "'; DELETE FROM public.query_cache; --", "yes"])
def test_emergency_clear_refuses_anything_but_the_token(conn, token):
    assert conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0] > 0
    expect_invalid(conn, "SELECT public.emergency_clear_cache(%s)", [token], "EMERGENCY_CLEAR_CONFIRMED")


def test_values_that_cannot_be_the_type_fail_before_the_function(conn):
    before = state(conn)
    assert sqlstate_of(conn, "SELECT * FROM public.get_cache_cleanup_stats(%s::integer)", [2**31])[0] == "22003"
    assert sqlstate_of(conn, "SELECT public.get_expert_sessions_with_stats_cached(%s::bigint)", [2**63])[0] == "22003"
    assert sqlstate_of(conn, "SELECT public.get_expert_sessions_with_stats_cached(1, %s::interval)",
                       ["soon"])[0] == "22007"
    assert sqlstate_of(conn, "SELECT public.get_expert_sessions_with_stats_cached(1, %s::interval)",
                       ["99999999999 years"])[0] in {"22008", "22015"}
    assert sqlstate_of(conn, "SELECT * FROM public.get_cache_cleanup_stats(%s::text::integer)", ["7 days"])[0] == \
        "22P02"
    assert state(conn) == before


# --- property tests --------------------------------------------------------------------------------

FRAGMENTS = [
    "'", "''", "\"", "%", "_", "\\", "%_%", ";", "--", "/*", "*/", "$$", "$1", "' OR '1'='1",
    "'; DROP TABLE public.query_cache; --", "expert_sessions", "product_performance", "expert_sessions:1",
    "expert_sessions:all", "hits", "size", "age", "expires", "compute", "saved", "key", "hour", "day", "week",
    "ünïcødé ✓ 🚀", "日本語", "\u202e", "NULL", "null", " ", "\t", TOKEN,
]
texts = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60),
    st.builds(lambda a, b: a + b, st.sampled_from(FRAGMENTS), st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)),
    st.integers(min_value=190, max_value=5000).map(lambda n: "x" * n),
    st.none(),
)
small_ints = st.one_of(
    st.sampled_from([0, 1, -1, 7, 3650, 3651, 10000, 10001, INT4[1], INT4[1] + 1, INT4[0], INT4[0] - 1]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-5, max_value=5000),
    st.none(),
)
big_ints = st.one_of(
    st.sampled_from([0, 1, -1, 3, 40, 41, INT8[1], INT8[1] + 1, INT8[0], INT8[0] - 1]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=100),
    st.none(),
)
deltas = st.one_of(
    st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=400)),
    st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(days=366),
                     timedelta(days=366, microseconds=1), timedelta(days=-1)]),
    st.timedeltas(),
    st.none(),
)
interval_texts = st.one_of(
    st.sampled_from(["5 minutes", "1 hour", "0", "-1 day", "1 year", "13 mons", "1 day -25 hours", "P1D", "PT5M",
                     "1000000 years", "178000000 years", "99999999999 years", "soon", "'; DROP TABLE x; --",
                     "1 fortnight", "@ 5 mins ago", "5 minutes ago", "infinity", "-infinity", ""]),
    texts,
)
# Valid values often enough that successes are exercised too.
days_values = st.one_of(st.integers(min_value=1, max_value=3650), small_ints)
buckets = st.one_of(st.sampled_from(["hour", "day", "week"]), st.sampled_from(["hour", "day", "week"]), texts)
cache_names = st.one_of(st.sampled_from(CACHES), st.sampled_from(CACHES + [None]), texts)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def in_range(value, bounds) -> bool:
    return value is None or bounds[0] <= value <= bounds[1]


def check(conn, sql, params, *, valid: bool | None, may_be_unparsable: bool = False):
    """valid: True/False when the outcome is known; None when only PostgreSQL can tell."""
    before = state(conn)
    outcome = sqlstate_of(conn, sql, params)
    if outcome is None:
        assert valid is not False, f"{sql} {params!r} should have failed"
        event("succeeded")
        return True
    code, message = outcome
    event(f"failed with {code}")
    allowed = {"22023"} | (UNPARSABLE if may_be_unparsable else set())
    assert code in allowed, f"{sql} {params!r}: {code} {message}"
    assert valid is not True, f"{sql} {params!r} should have succeeded: {message}"
    assert state(conn) == before, f"{sql} {params!r} failed but changed the state"
    return False


@SETTINGS
@given(ident=big_ints, duration=deltas, function=st.sampled_from(
    ["get_expert_sessions_with_stats_cached", "get_product_performance_cached"]))
def test_property_cached_functions_with_typed_intervals(conn, ident, duration, function):
    fits = in_range(ident, INT8)
    valid = fits and (ident is None or ident > 0) and duration is not None and \
        timedelta(0) < duration <= timedelta(days=366)
    sql = f"SELECT public.{function}(%s::bigint, %s::interval)"
    if not fits:
        assert sqlstate_of(conn, sql, [ident, duration])[0] == "22003"
        return
    if check(conn, sql, [ident, duration], valid=valid):
        twin = function.removesuffix("_cached")
        got = conn.execute(sql, [ident, duration]).fetchone()[0]
        assert got == conn.execute(f"SELECT public.{twin}(%s::bigint)", [ident]).fetchone()[0]


@SETTINGS
@given(duration=interval_texts)
def test_property_cached_functions_with_interval_text(conn, duration):
    check(conn, "SELECT public.get_expert_sessions_with_stats_cached(3, %s::text::interval)", [duration],
          valid=None, may_be_unparsable=True)


@SETTINGS
@given(ident=big_ints, function=st.sampled_from(["get_expert_sessions_with_stats", "get_product_performance"]))
def test_property_direct_functions(conn, ident, function):
    sql = f"SELECT public.{function}(%s::bigint)"
    if not in_range(ident, INT8):
        assert sqlstate_of(conn, sql, [ident])[0] == "22003"
        return
    check(conn, sql, [ident], valid=ident is None or ident > 0)


@SETTINGS
@given(days=days_values, function=st.sampled_from(
    ["get_cache_cleanup_stats", "get_cache_fallback_usage"]))
def test_property_days_functions(conn, days, function):
    sql = f"SELECT * FROM public.{function}(%s::integer)"
    if not in_range(days, INT4):
        assert sqlstate_of(conn, sql, [days])[0] == "22003"
        return
    check(conn, sql, [days], valid=days is not None and 1 <= days <= 3650)


@SETTINGS
@given(days=days_values, bucket=buckets, cache=cache_names)
def test_property_hit_rate_series(conn, days, bucket, cache):
    sql = "SELECT * FROM public.get_cache_hit_rate_series(%s::integer, %s, %s)"
    if not in_range(days, INT4):
        assert sqlstate_of(conn, sql, [days, bucket, cache])[0] == "22003"
        return
    valid = days is not None and 1 <= days <= 3650 and bucket in ("hour", "day", "week") and \
        (cache is None or cache in CACHES)
    check(conn, sql, [days, bucket, cache], valid=valid)


@SETTINGS
@given(days=days_values, bucket=buckets)
def test_property_load_reduction_series(conn, days, bucket):
    sql = "SELECT * FROM public.get_cache_load_reduction_series(%s::integer, %s)"
    if not in_range(days, INT4):
        assert sqlstate_of(conn, sql, [days, bucket])[0] == "22003"
        return
    check(conn, sql, [days, bucket], valid=days is not None and 1 <= days <= 3650 and bucket in ("hour", "day", "week"))


ORDERS = ["hits", "size", "age", "expires", "compute", "saved", "key"]


@SETTINGS
@given(limit=st.one_of(st.integers(min_value=1, max_value=10000), small_ints),
       order_by=st.one_of(st.sampled_from(ORDERS), st.sampled_from(ORDERS), texts),
       cache=cache_names, search=st.one_of(st.sampled_from(["expert", "%", "_", ":1", "ALL"]), texts))
def test_property_top_cache_entries(conn, limit, order_by, cache, search):
    sql = "SELECT * FROM public.get_top_cache_entries(%s::integer, %s, %s, %s)"
    if not in_range(limit, INT4):
        assert sqlstate_of(conn, sql, [limit, order_by, cache, search])[0] == "22003"
        return
    valid = limit is not None and 1 <= limit <= 10000 and order_by in ORDERS and \
        (cache is None or cache in CACHES) and (search is None or len(search) <= 200)
    if check(conn, sql, [limit, order_by, cache, search], valid=valid):
        found = conn.execute(sql, [limit, order_by, cache, search]).fetchall()
        assert len(found) <= limit
        if search:
            assert all(search.lower() in key.lower() for key, *_ in found)


@SETTINGS
@given(cache=cache_names, reason=texts)
def test_property_record_cache_fallback(conn, cache, reason):
    check(conn, "SELECT public.record_cache_fallback(%s, %s)", [cache, reason], valid=cache in CACHES)


@SETTINGS
@given(cache=cache_names, key=st.one_of(st.none(), st.sampled_from(["expert_sessions:1", "product_performance:all"]),
                                         texts))
def test_property_invalidate_cache(conn, cache, key):
    valid = (cache is None) != (key is None) and (cache is None or cache in CACHES) and \
        (key is None or 1 <= len(key) <= 1000)
    check(conn, "SELECT public.invalidate_cache(%s, %s)", [cache, key], valid=valid)


@SETTINGS
@given(token=st.one_of(st.sampled_from([TOKEN]), texts))
def test_property_emergency_clear_cache(conn, token):
    if check(conn, "SELECT public.emergency_clear_cache(%s)", [token], valid=token == TOKEN):
        assert conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0] == 0
        conn.execute("SELECT public.get_expert_sessions_with_stats_cached(1, '1 hour')")  # something to protect


@pytest.mark.parametrize("sql", [
    "SELECT public.cleanup_expired_cache()",
    "SELECT public.optimize_cache()",
    "SELECT * FROM public.analyze_cache_health()",
    "SELECT * FROM public.get_cache_metrics_overview()",
    "SELECT * FROM public.get_cache_size_distribution()",
])
def test_functions_without_arguments_succeed(conn, sql):
    assert conn.execute(sql).fetchall() is not None
