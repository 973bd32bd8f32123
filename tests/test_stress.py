"""Stress: no cached read returns data older than a commit that was already acknowledged.

The promise under attack: once a writer's COMMIT has returned, every cached call that starts
after it includes that commit. "Starts" means the call's statement at READ COMMITTED, and the
transaction's snapshot (its first statement) at REPEATABLE READ and SERIALIZABLE.

One test per maintenance action (cleanup, eviction by the size bound, optimize, invalidation by
cache name and by key, emergency clear), on each server, runs for CACHELIB_STRESS_SECONDS:

- a maintainer calling that action in a loop (as the database owner);
- writers inserting expert_sessions and orders of the watched ids, one row in autocommit or
  several rows in one transaction (as the owner);
- readers of both cached functions, for each watched id and for NULL (all rows), at READ
  COMMITTED (autocommit calls, and several calls in one transaction), REPEATABLE READ and
  SERIALIZABLE, asking for data at most 1 microsecond, 1 second or 1 hour old (constant misses
  and steady hits). They connect as a LOGIN member of `authenticated`: that is who calls the
  cache in production.

A ledger records every acknowledged commit: per watched id, when COMMIT had returned and the
value it left (session_count per expert, order_count per product; both only grow here). A read
must show at least the value the ledger held when the read started. The ledger stamps a commit
after COMMIT returned, which can only lower what a read is required to see: every stale read
counted here is real. After the storm one more read of every key must match the ledger exactly:
that catches a stale result stored for everyone that nobody happened to read.

Results go to tests/artifacts/stress.json; `make stress` runs this file for 25 s per action
and prints them as a table (`python -m tests.test_stress`).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

SECONDS = float(os.environ.get("CACHELIB_STRESS_SECONDS", "1.5"))
SUMMARY_FILE = Path(__file__).parent / "artifacts" / "stress.json"
READER_ROLE = "stress_reader"
READER_PASSWORD = "stress-reader-not-a-secret"  # trust auth on both test servers; kept for password auth
N_READERS = 8
N_WRITERS = 3
# Only a guard against a hang: a statement that waits this long is a failure (57014 is not allowed).
HANG_GUARD = "-c statement_timeout=60s"
DURATIONS = ("1 microsecond", "1 second", "1 hour", "1 hour")  # misses all the time, and hits

# The run must have meant something (counts, never wall-clock time).
MIN_COMMITS = 10
MIN_OVERLAPPING_READS = 5
MIN_MAINTENANCE_CALLS = 1

Target = tuple[str, int]  # ("expert", 3), ("product", 1)


# --- what is cached, what is written, what is watched ----------------------------------------------

@dataclass(frozen=True)
class CachedFunction:
    kind: str
    name: str  # in public; its parameters: the id (NULL for all), the cache duration
    id_field: str
    value_field: str  # grows by one with every source row inserted for that id
    watched: tuple[int, ...]
    insert_sql: str  # one source row for an id
    count_sql: str  # the committed value, straight from the source table

    @property
    def call_sql(self) -> str:
        return f"SELECT public.{self.name}(%s, %s::interval)"

    def targets(self, ident: int | None) -> list[Target]:
        """The watched targets whose value a call for `ident` returns."""
        return [(self.kind, i) for i in (self.watched if ident is None else (ident,))]


EXPERTS = CachedFunction(
    kind="expert",
    name="get_expert_sessions_with_stats_cached",
    id_field="expert_id", value_field="session_count", watched=(3, 4),
    insert_sql="INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
               "VALUES (%s, now(), 30, 'completed')",
    count_sql="SELECT count(*) FROM public.expert_sessions WHERE expert_id = %s")
PRODUCTS = CachedFunction(
    kind="product",
    name="get_product_performance_cached",
    id_field="product_id", value_field="order_count", watched=(1, 2),
    insert_sql="INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) VALUES (%s, 1, 9.99, now())",
    count_sql="SELECT count(*) FROM public.orders WHERE product_id = %s")
FUNCTIONS = (EXPERTS, PRODUCTS)
BY_KIND = {f.kind: f for f in FUNCTIONS}
TARGETS: list[Target] = [t for f in FUNCTIONS for t in f.targets(None)]


@dataclass(frozen=True)
class Action:
    name: str
    statements: tuple[str, ...]  # called in turn, in a loop
    max_entries: str | None = None  # the size bound during the run (restored after it)


def _invalidate_key(key: str) -> str:
    return f"SELECT public.invalidate_cache(NULL, '{key}')"


ACTIONS = [
    Action("cleanup", ("SELECT public.cleanup_expired_cache()",)),
    # Three entries at most: every cleanup also evicts live entries while they are read and written.
    Action("eviction", ("SELECT public.cleanup_expired_cache()",), max_entries="3"),
    Action("optimize", ("SELECT public.optimize_cache()",)),
    Action("invalidate_by_name", ("SELECT public.invalidate_cache('expert_sessions')",
                                  "SELECT public.invalidate_cache('product_performance')")),
    Action("invalidate_by_key", tuple(_invalidate_key(k) for k in (
        "expert_sessions:all", "expert_sessions:3", "product_performance:all", "product_performance:1",
        "expert_sessions:4", "product_performance:2"))),
    Action("emergency_clear", ("SELECT public.emergency_clear_cache('EMERGENCY_CLEAR_CONFIRMED')",)),
]


# --- the ledger of acknowledged commits ------------------------------------------------------------

class CommitLedger:
    """Per target: when each acknowledged commit had returned, and the value it left behind."""

    def __init__(self, committed: dict[Target, int]):
        self._lock = threading.Lock()
        self._times = {t: [float("-inf")] for t in committed}
        self._values = {t: [v] for t, v in committed.items()}
        self.commits = 0

    def acknowledge(self, rows_added: Counter) -> None:
        with self._lock:
            # The clock is read under the lock so every history stays sorted. It reads later than
            # the real acknowledgement, which only lowers what a read is required to see.
            at = time.monotonic()
            self.commits += 1
            for target, n in rows_added.items():
                self._times[target].append(at)
                self._values[target].append(self._values[target][-1] + n)

    def required(self, target: Target, started: float) -> int:
        """The value left by every commit acknowledged before `started`."""
        with self._lock:
            return self._values[target][bisect.bisect_left(self._times[target], started) - 1]

    def committed_during(self, targets: list[Target], started: float, ended: float) -> bool:
        with self._lock:
            for target in targets:
                times = self._times[target]
                first_after_start = bisect.bisect_left(times, started)
                if first_after_start < len(times) and times[first_after_start] <= ended:
                    return True
        return False

    def latest(self, target: Target) -> int:
        with self._lock:
            return self._values[target][-1]


# --- reads and their verdicts -----------------------------------------------------------------------

@dataclass
class Read:
    function: CachedFunction
    ident: int | None
    duration: str
    started: float  # the call's statement (READ COMMITTED) or the transaction's snapshot
    ended: float
    data: list

    def seen(self) -> dict[Target, int | None]:
        """The watched values in the result; None where a watched id is missing from it."""
        by_id = {row[self.function.id_field]: row[self.function.value_field] for row in self.data}
        return {t: by_id.get(t[1]) for t in self.function.targets(self.ident)}

    def describe(self) -> str:
        ident = "NULL" if self.ident is None else self.ident
        return f"{self.function.name}({ident}, '{self.duration}')"


# Errors a reader at this level must be ready for; any other error anywhere fails the test.
ALLOWED_SQLSTATES = {"repeatable_read": {"40001"}, "serializable": {"40001"}}


@dataclass
class Tally:
    """What one run did, shared by all its threads."""

    reads: Counter = field(default_factory=Counter)  # per reader mode
    overlapping: Counter = field(default_factory=Counter)  # reads during which a watched commit returned
    stale: Counter = field(default_factory=Counter)
    discarded: Counter = field(default_factory=Counter)  # reads of SERIALIZABLE transactions that failed
    serialization_failures: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # "who/what/SQLSTATE": only the unexpected ones
    maintenance_calls: int = 0
    stale_examples: list = field(default_factory=list)
    error_examples: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def judge(self, mode: str, reads: list[Read], ledger: CommitLedger) -> None:
        for read in reads:
            seen = read.seen()
            overlapped = ledger.committed_during(list(seen), read.started, read.ended)
            behind = {t: (value, ledger.required(t, read.started)) for t, value in seen.items()}
            behind = {t: v for t, v in behind.items() if v[0] is None or v[0] < v[1]}
            with self.lock:
                self.reads[mode] += 1
                self.overlapping[mode] += overlapped
                if behind:
                    self.stale[mode] += 1
                    if len(self.stale_examples) < 5:
                        self.stale_examples.append(
                            {"mode": mode, "call": read.describe(),
                             "seen_vs_required": {f"{k} {i}": v for (k, i), v in behind.items()}})

    def discard(self, mode: str, reads: list[Read]) -> None:
        with self.lock:
            self.discarded[mode] += len(reads)

    def error(self, who: str, what: str, exc: psycopg.Error) -> None:
        sqlstate = getattr(exc, "sqlstate", None)
        with self.lock:
            if sqlstate in ALLOWED_SQLSTATES.get(what, ()):
                self.serialization_failures[what] += 1
                return
            self.errors[f"{who}/{what}/{sqlstate}"] += 1
            if len(self.error_examples) < 5:
                detail = getattr(getattr(exc, "diag", None), "message_detail", None) or ""
                self.error_examples.append(f"{who}/{what}: {sqlstate} {str(exc).splitlines()[0]} {detail}".strip())

    def maintained(self) -> None:
        with self.lock:
            self.maintenance_calls += 1


# --- the participants -------------------------------------------------------------------------------

def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, options=HANG_GUARD)


def end_transaction(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        conn.execute("ROLLBACK")


def cached_read(conn, rng: random.Random, started: float | None = None) -> Read:
    function = rng.choice(FUNCTIONS)
    ident = rng.choice((*function.watched, None))
    duration = rng.choice(DURATIONS)
    called = time.monotonic()
    data = conn.execute(function.call_sql, [ident, duration]).fetchone()[0]
    return Read(function, ident, duration, called if started is None else started, time.monotonic(), data)


def read_committed_call(conn, rng, reads: list[Read]) -> None:
    reads.append(cached_read(conn, rng))


def read_committed_transaction(conn, rng, reads: list[Read]) -> None:
    # Each call's statement starts after the commits acknowledged before it, so each is judged from its own start.
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    for _ in range(rng.randint(2, 4)):
        reads.append(cached_read(conn, rng))
    conn.execute("COMMIT")


def snapshot_transaction(level: str) -> Callable:
    def run(conn, rng, reads: list[Read]) -> None:
        noted = time.monotonic()  # before the snapshot: every commit acknowledged by now must be in it
        conn.execute(f"BEGIN ISOLATION LEVEL {level}")
        if rng.random() < 0.5:
            # Take the snapshot before the first cached call, so commits land between the two: a
            # miss then computes from a snapshot older than a commit that has already returned.
            conn.execute("SELECT 1")
            time.sleep(rng.uniform(0, 0.003))
        for _ in range(rng.randint(1, 3)):
            reads.append(cached_read(conn, rng, started=noted))
        conn.execute("COMMIT")
    return run


READER_MODES: dict[str, Callable] = {
    "read_committed": read_committed_call,
    "read_committed_txn": read_committed_transaction,
    "repeatable_read": snapshot_transaction("REPEATABLE READ"),
    "serializable": snapshot_transaction("SERIALIZABLE"),
}
READER_WEIGHTS = (4, 2, 2, 2)


def reader(seed: int, ledger: CommitLedger, tally: Tally, stop: threading.Event) -> Callable:
    def run(conn):
        rng = random.Random(seed)
        while not stop.is_set():
            mode = rng.choices(list(READER_MODES), READER_WEIGHTS)[0]
            reads: list[Read] = []
            try:
                READER_MODES[mode](conn, rng, reads)
            except psycopg.Error as exc:
                end_transaction(conn)
                tally.error("reader", mode, exc)
                if mode == "serializable":
                    # What a SERIALIZABLE transaction read is only valid once it commits.
                    tally.discard(mode, reads)
                    continue
            tally.judge(mode, reads, ledger)
    return run


def commit_rows(conn, rows: Counter, rng: random.Random) -> None:
    """Insert the rows, one per target occurrence; a single row in autocommit, more in one transaction."""
    inserts = list(rows.elements())
    rng.shuffle(inserts)  # transactions touch their keys in every order
    if len(inserts) == 1:
        kind, ident = inserts[0]
        conn.execute(BY_KIND[kind].insert_sql, [ident])
        return
    conn.execute("BEGIN")
    for kind, ident in inserts:
        conn.execute(BY_KIND[kind].insert_sql, [ident])
    conn.execute("COMMIT")


def writer(seed: int, ledger: CommitLedger, tally: Tally, stop: threading.Event) -> Callable:
    def run(conn):
        rng = random.Random(seed)
        while not stop.is_set():
            size = 1 if rng.random() < 0.5 else rng.randint(2, 4)
            rows = Counter(rng.choice(TARGETS) for _ in range(size))
            try:
                commit_rows(conn, rows, rng)
            except psycopg.Error as exc:
                end_transaction(conn)
                tally.error("writer", "autocommit" if size == 1 else "transaction", exc)
                continue
            ledger.acknowledge(rows)
            time.sleep(rng.uniform(0, 0.005))  # leave the readers time between commits
    return run


def maintainer(action: Action, tally: Tally, stop: threading.Event) -> Callable:
    def run(conn):
        for statement in itertools.cycle(action.statements):
            if stop.is_set():
                return
            try:
                conn.execute(statement).fetchall()
            except psycopg.Error as exc:
                end_transaction(conn)
                tally.error("maintainer", action.name, exc)
                continue
            tally.maintained()
    return run


class Participant(threading.Thread):
    """Runs fn(conn) on a connection of its own; a crash is re-raised by finish()."""

    def __init__(self, url: str, fn: Callable):
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.fn = fn
        self.crash: BaseException | None = None

    def run(self):
        try:
            self.fn(self.conn)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.crash = exc
        finally:
            self.conn.close()

    def finish(self) -> None:
        self.join(90)
        assert not self.is_alive(), "a participant hung (waited past the statement timeout)"
        if self.crash:
            raise self.crash


@dataclass(frozen=True)
class StressDatabase:
    owner: str  # a superuser: writers and the maintainer
    reader: str  # a LOGIN member of authenticated: the readers


def run_storm(urls: StressDatabase, action: Action, ledger: CommitLedger) -> Tally:
    tally, stop = Tally(), threading.Event()
    participants = [Participant(urls.reader, reader(seed, ledger, tally, stop)) for seed in range(N_READERS)]
    participants += [Participant(urls.owner, writer(100 + seed, ledger, tally, stop)) for seed in range(N_WRITERS)]
    participants.append(Participant(urls.owner, maintainer(action, tally, stop)))
    try:
        for p in participants:
            p.start()
        stop.wait(SECONDS)
    finally:
        stop.set()
    for p in participants:
        p.finish()
    return tally


# --- the test ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stress_db(pg_url) -> StressDatabase:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # Roles belong to the server, not the database: create it once per server.
        conn.execute(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
              CREATE ROLE {READER_ROLE} LOGIN PASSWORD '{READER_PASSWORD}' IN ROLE authenticated;
            END IF; END $$""")
        # A deadlock fails the test either way; found in 50 ms instead of 1 s it does not stall the run
        # (and the stale-read hunt with it) while both sides wait for the detector.
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET deadlock_timeout = '50ms'")
    parts = conninfo_to_dict(pg_url)
    return StressDatabase(pg_url, make_conninfo(**{**parts, "user": READER_ROLE, "password": READER_PASSWORD}))


@contextmanager
def size_bound(conn, max_entries: str | None):
    if max_entries is None:
        yield
        return
    old = conn.execute("SELECT value FROM cache_private.settings WHERE name = 'max_entries'").fetchone()[0]
    conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'max_entries'", [max_entries])
    try:
        yield
    finally:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'max_entries'", [old])


def committed_values(conn) -> dict[Target, int]:
    return {t: conn.execute(BY_KIND[t[0]].count_sql, [t[1]]).fetchone()[0] for t in TARGETS}


def stale_after_the_storm(reader_url: str, ledger: CommitLedger) -> list[dict]:
    """Nothing runs any more: every cached call must now show exactly what the ledger holds."""
    wrong = []
    with connect(reader_url) as conn:
        for function, ident in [(f, i) for f in FUNCTIONS for i in (*f.watched, None)]:
            started = time.monotonic()
            data = conn.execute(function.call_sql, [ident, "1 hour"]).fetchone()[0]
            read = Read(function, ident, "1 hour", started, time.monotonic(), data)
            for target, value in read.seen().items():
                if value != ledger.latest(target):
                    wrong.append({"call": read.describe(), "target": f"{target[0]} {target[1]}",
                                  "seen": value, "committed": ledger.latest(target)})
    return wrong


def summarize(server: str, action: Action, tally: Tally, ledger: CommitLedger, wrong_after: list) -> dict:
    return {
        "server": server, "action": action.name, "seconds": SECONDS,
        "reads": sum(tally.reads.values()), "overlapping": sum(tally.overlapping.values()),
        "stale": sum(tally.stale.values()), "stale_after": len(wrong_after),
        "reads_by_mode": dict(tally.reads), "overlapping_by_mode": dict(tally.overlapping),
        "stale_by_mode": dict(tally.stale), "discarded_by_mode": dict(tally.discarded),
        "serialization_failures": dict(tally.serialization_failures), "errors": dict(tally.errors),
        "commits": ledger.commits, "maintenance_calls": tally.maintenance_calls,
        "stale_examples": tally.stale_examples, "stale_after_examples": wrong_after[:5],
        "error_examples": tally.error_examples,
    }


def save_summary(summary: dict) -> None:
    """Keep one row per server and action in SUMMARY_FILE (tests run one at a time)."""
    SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(SUMMARY_FILE.read_text()) if SUMMARY_FILE.exists() else {}
    rows[f"{summary['server']}/{summary['action']}"] = summary
    SUMMARY_FILE.write_text(json.dumps(rows, indent=1, sort_keys=True))


def problems_of(summary: dict) -> list[str]:
    problems = []
    if summary["stale"]:
        problems.append(f"{summary['stale']} stale reads {summary['stale_by_mode']}, e.g. {summary['stale_examples']}")
    if summary["stale_after"]:
        problems.append(f"{summary['stale_after']} keys still stale after the storm: "
                        f"{summary['stale_after_examples']}")
    if summary["errors"]:
        problems.append(f"unexpected errors {summary['errors']}, e.g. {summary['error_examples']}")
    # The run must have exercised the promise: commits, reads across them, maintenance, every mode.
    if summary["commits"] < MIN_COMMITS:
        problems.append(f"only {summary['commits']} commits")
    if summary["overlapping"] < MIN_OVERLAPPING_READS:
        problems.append(f"only {summary['overlapping']} reads overlapped a commit")
    if summary["maintenance_calls"] < MIN_MAINTENANCE_CALLS:
        problems.append("no maintenance call completed")
    idle = [mode for mode in READER_MODES if not summary["reads_by_mode"].get(mode)]
    if idle:
        problems.append(f"no read judged for {idle}")
    return problems


@pytest.mark.timeout(SECONDS + 240)
@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.name)
def test_no_read_is_older_than_an_acknowledged_commit(stress_db, action, request):
    server = request.node.callspec.params["pg_url"]
    with psycopg.connect(stress_db.owner, autocommit=True) as admin:
        # Start empty, so a stale entry stored during an earlier action is not counted against this one.
        admin.execute("SELECT public.emergency_clear_cache('EMERGENCY_CLEAR_CONFIRMED')")
        ledger = CommitLedger(committed_values(admin))
        with size_bound(admin, action.max_entries):
            tally = run_storm(stress_db, action, ledger)
            wrong_after = stale_after_the_storm(stress_db.reader, ledger)
        # The ledger itself must be exact, or its verdicts mean nothing.
        assert committed_values(admin) == {t: ledger.latest(t) for t in TARGETS}
    summary = summarize(server, action, tally, ledger, wrong_after)
    save_summary(summary)
    print(f"\n{server} {action.name}: {table_row(summary)}")
    problems = problems_of(summary)
    assert not problems, "\n".join(problems)


# --- the table `make stress` prints -----------------------------------------------------------------

COLUMNS = ("server", "action", "reads", "overlap", "stale", "rc/txn/rr/ser", "after", "40001", "errors",
           "commits", "maint")


def table_row(s: dict) -> str:
    by_mode = "/".join(str(s["stale_by_mode"].get(m, 0)) for m in READER_MODES)
    cells = (s["server"], s["action"], s["reads"], s["overlapping"], s["stale"], by_mode, s["stale_after"],
             sum(s["serialization_failures"].values()), sum(s["errors"].values()), s["commits"],
             s["maintenance_calls"])
    return "  ".join(f"{c!s:<{_width(i)}}" for i, c in enumerate(cells)).rstrip()


def _width(column: int) -> int:
    return max(len(COLUMNS[column]), 18 if column == 1 else 6)


def print_summary(path: Path = SUMMARY_FILE) -> None:
    if not path.exists():
        print(f"no stress results in {path}")
        return
    rows = json.loads(path.read_text())
    seconds = sorted({r["seconds"] for r in rows.values()})
    print(f"\nstress results ({', '.join(f'{s:g}' for s in seconds)} s per action; stale by mode: "
          "read committed / in a transaction / repeatable read / serializable; after: keys stale once all stopped)")
    print("  ".join(f"{c:<{_width(i)}}" for i, c in enumerate(COLUMNS)).rstrip())
    for key in sorted(rows):
        print(table_row(rows[key]))
    for key in sorted(rows):
        for line in (rows[key]["error_examples"] + [str(e) for e in rows[key]["stale_examples"][:2]]):
            print(f"  {key}: {line}")


if __name__ == "__main__":
    print_summary()
