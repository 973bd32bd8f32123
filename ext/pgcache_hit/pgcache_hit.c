/*
 * pgcache_hit: the cache hit of cache_private.get_or_compute served from C, and counted in
 * shared memory instead of appended to cache_private.cache_events. Optional (see README.md
 * here): `python -m cachelib fast-hits enable` installs it and rewrites every generated
 * wrapper to ask it first (migration 0026).
 *
 * Why it exists: a hit through the PL/pgSQL engine costs a chain of function frames with their
 * own settings and one insert (a transaction id and a commit) per hit; under many clients on
 * one key that runs at about a third of a bare primary-key read.
 *
 * cache_private.hit_fast(cache, key, duration) returns the entry's data when the same quick
 * proof as get_or_compute (0018) holds, read through the two primary keys without the
 * executor, and NULL otherwise: the wrapper then goes the SQL way, which decides everything
 * hit_fast does not (a miss, a transaction that wrote, a read-only or standby transaction,
 * SERIALIZABLE, a bad duration, an entry needing the slow proof, the owner's test clock).
 *
 * Hits are summed per (database, cache, key, entry version, UTC hour) in a segment of the DSM
 * registry (PostgreSQL 17+): no transaction id, no row. cache_private.drain_fast_hits() hands
 * this database's sums over; a drain whose transaction or subtransaction aborts puts them back.
 * A slot table that is full, or a key too long for a slot, appends the hit as the SQL engine
 * does, so every hit is counted. What the sums cannot survive: a server restart or crash before
 * the drain (the unlogged event table the SQL engine appends to is lost on a crash too, but
 * kept on a clean restart).
 *
 * The function sets no search_path (that setting's save and restore is part of what it saves):
 * it finds its tables by schema and name, and its one SQL statement is qualified.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/dsm_registry.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

#define HIT_SLOTS 4096
#define MAX_PROBES 64
#define NAME_BYTES 64
#define KEY_BYTES 256

typedef struct HitSlot
{
	slock_t		mutex;			/* guards the sums; identity changes only under the table's lock */
	bool		used;
	Oid			database;		/* one table serves every database of the server */
	TimestampTz hour;
	TimestampTz entry_created_at;
	char		cache_name[NAME_BYTES];
	char		cache_key[KEY_BYTES];
	int64		hits;
	double		elapsed_ms;
	double		compute_ms;
	TimestampTz first_hit_at;
	TimestampTz last_hit_at;
} HitSlot;

typedef struct HitTable
{
	LWLock		lock;			/* shared: find a slot and add; exclusive: take a slot, drain */
	HitSlot		slots[HIT_SLOTS];
} HitTable;

typedef struct DrainedHits
{
	int			count;
	HitSlot    *slots;
	SubTransactionId subid;		/* the (sub)transaction whose abort puts them back */
	struct DrainedHits *earlier;	/* an earlier drain of the same transaction */
} DrainedHits;

static HitTable *hit_table = NULL;
static SPIPlanPtr append_plan = NULL;
static DrainedHits *drained_this_transaction = NULL;
static bool callback_registered = false;

PG_FUNCTION_INFO_V1(hit_fast);
PG_FUNCTION_INFO_V1(drain_fast_hits);

static const char *append_sql =
"INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms) "
"VALUES ($1, $2, $3, 'hit', $4, $5)";

static void
init_hit_table(void *ptr)
{
	HitTable   *table = (HitTable *) ptr;

	memset(table, 0, sizeof(HitTable));
	LWLockInitialize(&table->lock, LWLockNewTrancheId());
	for (int i = 0; i < HIT_SLOTS; i++)
		SpinLockInit(&table->slots[i].mutex);
}

static HitTable *
attach_hit_table(void)
{
	bool		found;

	if (hit_table == NULL)
	{
		hit_table = GetNamedDSMSegment("pgcache_hit", sizeof(HitTable), init_hit_table, &found);
		LWLockRegisterTranche(hit_table->lock.tranche, "pgcache_hit");
	}
	return hit_table;
}

static uint32
slot_hash(Oid database, const char *cache_key, TimestampTz entry_created_at, TimestampTz hour)
{
	uint32		h = hash_combine(hash_bytes((const unsigned char *) cache_key, strlen(cache_key)),
								 hash_bytes((const unsigned char *) &database, sizeof(database)));

	h = hash_combine(h, hash_bytes((const unsigned char *) &entry_created_at, sizeof(entry_created_at)));
	return hash_combine(h, hash_bytes((const unsigned char *) &hour, sizeof(hour)));
}

static bool
slot_matches(const HitSlot *slot, Oid database, const char *cache_name, const char *cache_key,
			 TimestampTz entry_created_at, TimestampTz hour)
{
	return slot->database == database && slot->hour == hour && slot->entry_created_at == entry_created_at
		&& strcmp(slot->cache_key, cache_key) == 0 && strcmp(slot->cache_name, cache_name) == 0;
}

static void
add_to_slot(HitSlot *slot, int64 hits, double elapsed_ms, double compute_ms,
			TimestampTz first_hit_at, TimestampTz last_hit_at)
{
	SpinLockAcquire(&slot->mutex);
	if (slot->hits == 0 || first_hit_at < slot->first_hit_at)
		slot->first_hit_at = first_hit_at;
	if (slot->hits == 0 || last_hit_at > slot->last_hit_at)
		slot->last_hit_at = last_hit_at;
	slot->hits += hits;
	slot->elapsed_ms += elapsed_ms;
	slot->compute_ms += compute_ms;
	SpinLockRelease(&slot->mutex);
}

/*
 * Find the slot of (database, cache, key, entry version, hour), with the table's lock held:
 * shared to look, exclusive to take a free slot (take_free). NULL when it is not there, or
 * when no slot is free within MAX_PROBES of where its hash starts.
 */
static HitSlot *
find_slot(HitTable *table, Oid database, const char *cache_name, const char *cache_key,
		  TimestampTz entry_created_at, TimestampTz hour, bool take_free)
{
	uint32		start = slot_hash(database, cache_key, entry_created_at, hour) % HIT_SLOTS;

	for (int probe = 0; probe < MAX_PROBES; probe++)
	{
		HitSlot    *slot = &table->slots[(start + probe) % HIT_SLOTS];

		if (!slot->used)
		{
			if (!take_free)
				return NULL;	/* slots are only freed all at once, so the chain ends here */
			slot->used = true;
			slot->database = database;
			slot->hour = hour;
			slot->entry_created_at = entry_created_at;
			strlcpy(slot->cache_name, cache_name, NAME_BYTES);
			strlcpy(slot->cache_key, cache_key, KEY_BYTES);
			slot->hits = 0;
			slot->elapsed_ms = 0;
			slot->compute_ms = 0;
			return slot;
		}
		if (slot_matches(slot, database, cache_name, cache_key, entry_created_at, hour))
			return slot;
	}
	return NULL;
}

/* Add hits to the table; false when they do not fit (the caller counts them another way). */
static bool
count_hits(const char *cache_name, const char *cache_key, TimestampTz entry_created_at,
		   TimestampTz first_hit_at, TimestampTz last_hit_at, int64 hits, double elapsed_ms,
		   double compute_ms)
{
	HitTable   *table = attach_hit_table();
	TimestampTz hour = last_hit_at - (last_hit_at % USECS_PER_HOUR);
	HitSlot    *slot;

	if (strlen(cache_name) >= NAME_BYTES || strlen(cache_key) >= KEY_BYTES)
		return false;
	LWLockAcquire(&table->lock, LW_SHARED);
	slot = find_slot(table, MyDatabaseId, cache_name, cache_key, entry_created_at, hour, false);
	if (slot == NULL)
	{
		LWLockRelease(&table->lock);
		LWLockAcquire(&table->lock, LW_EXCLUSIVE);
		slot = find_slot(table, MyDatabaseId, cache_name, cache_key, entry_created_at, hour, true);
	}
	if (slot != NULL)
		add_to_slot(slot, hits, elapsed_ms, compute_ms, first_hit_at, last_hit_at);
	LWLockRelease(&table->lock);
	return slot != NULL;
}

static SPIPlanPtr
kept_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(sql, nargs, argtypes);

		if (prepared == NULL)
			elog(ERROR, "pgcache_hit: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(prepared);
		*plan = prepared;
	}
	return *plan;
}

static void
append_hit(text *cache_name, text *cache_key, TimestampTz at, double elapsed_ms, double compute_ms)
{
	Oid			types[5] = {TIMESTAMPTZOID, TEXTOID, TEXTOID, FLOAT8OID, FLOAT8OID};
	Datum		values[5] = {TimestampTzGetDatum(at), PointerGetDatum(cache_name), PointerGetDatum(cache_key),
	Float8GetDatum(elapsed_ms), Float8GetDatum(compute_ms)};

	if (SPI_execute_plan(kept_plan(&append_plan, append_sql, 5, types), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "pgcache_hit: could not append a hit");
}

/* The entry as the quick proof needs it. */
typedef struct Entry
{
	Datum		data;			/* detoasted copy */
	double		compute_ms;
	TimestampTz created_at;
	TimestampTz expires_at;
	FullTransactionId computed_xmin;
	FullTransactionId computed_xmax;
} Entry;

/*
 * Where the proof reads: the two tables and query_cache's columns, looked up once per session
 * and forgotten on any relation cache invalidation (a migration altering a table).
 */
typedef struct Layout
{
	bool		valid;
	Oid			query_cache;
	Oid			invalidations;
	AttrNumber	data;
	AttrNumber	compute_ms;
	AttrNumber	created_at;
	AttrNumber	expires_at;
	AttrNumber	computed_xmin;
	AttrNumber	computed_xmax;
} Layout;

static Layout layout;
static bool layout_callback_registered = false;

static void
forget_layout(Datum arg, Oid relid)
{
	layout.valid = false;
}

static Oid
relation_named(const char *schema, const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid(schema, false));

	if (!OidIsValid(relid))
		elog(ERROR, "pgcache_hit: %s.%s does not exist", schema, name);
	return relid;
}

static AttrNumber
column_named(Oid relid, const char *name)
{
	AttrNumber	attnum = get_attnum(relid, name);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "pgcache_hit: query_cache has no column %s", name);
	return attnum;
}

static Layout *
current_layout(void)
{
	if (!layout_callback_registered)
	{
		CacheRegisterRelcacheCallback(forget_layout, (Datum) 0);
		layout_callback_registered = true;
	}
	if (!layout.valid)
	{
		layout.query_cache = relation_named("public", "query_cache");
		layout.invalidations = relation_named("cache_private", "invalidations");
		layout.data = column_named(layout.query_cache, "data");
		layout.compute_ms = column_named(layout.query_cache, "compute_ms");
		layout.created_at = column_named(layout.query_cache, "created_at");
		layout.expires_at = column_named(layout.query_cache, "expires_at");
		layout.computed_xmin = column_named(layout.query_cache, "computed_xmin");
		layout.computed_xmax = column_named(layout.query_cache, "computed_xmax");
		layout.valid = true;
	}
	return &layout;
}

/*
 * Open a table and its primary key, checked as a query would check them: the scans below bypass
 * the executor, so a caller without SELECT on the table (anyone but the engine's owner, who calls
 * this from its wrappers) is refused here rather than served what it may not read.
 */
static Relation
open_checked(Oid relid, Relation *index)
{
	Relation	heap;

	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied for table %s", get_rel_name(relid))));
	heap = table_open(relid, AccessShareLock);
	*index = index_open(RelationGetPrimaryKeyIndex(heap, false), AccessShareLock);
	return heap;
}

static void
close_both(Relation heap, Relation index)
{
	index_close(index, NoLock);
	table_close(heap, NoLock);
}

/* Equality on the first column of a text-keyed btree, in the index's collation. */
static void
key_equals(ScanKey key, Relation index, text *value)
{
	ScanKeyEntryInitialize(key, 0, 1, BTEqualStrategyNumber, InvalidOid, index->rd_indcollation[0],
						   F_TEXTEQ, PointerGetDatum(value));
}

/* Read the entry of cache_key through query_cache's primary key; false when there is none. */
static bool
read_entry(Layout *at, text *cache_key, Snapshot snapshot, Entry *entry)
{
	Relation	index;
	Relation	heap = open_checked(at->query_cache, &index);
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexScanDesc scan = index_beginscan(heap, index, snapshot, NULL, 1, 0);
	ScanKeyData key;
	bool		found;
	bool		isnull;

	key_equals(&key, index, cache_key);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
	{
		Datum		data = slot_getattr(slot, at->data, &isnull);
		Datum		xmin;
		Datum		xmax;
		bool		xmin_null;
		bool		xmax_null;

		found = !isnull;
		entry->data = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM_COPY(data));
		entry->compute_ms = DatumGetFloat8(slot_getattr(slot, at->compute_ms, &isnull));
		entry->created_at = DatumGetTimestampTz(slot_getattr(slot, at->created_at, &isnull));
		entry->expires_at = DatumGetTimestampTz(slot_getattr(slot, at->expires_at, &isnull));
		xmin = slot_getattr(slot, at->computed_xmin, &xmin_null);
		xmax = slot_getattr(slot, at->computed_xmax, &xmax_null);
		found = found && !xmin_null && !xmax_null;	/* no snapshot kept: the SQL engine decides */
		if (found)
		{
			entry->computed_xmin = DatumGetFullTransactionId(xmin);
			entry->computed_xmax = DatumGetFullTransactionId(xmax);
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	close_both(heap, index);
	return found;
}

/* Whether the invalidation log holds a writer of `cache_key` at or after `since`. */
static bool
invalidated_since(Relation heap, Relation index, text *cache_key, FullTransactionId since, Snapshot snapshot)
{
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexScanDesc scan = index_beginscan(heap, index, snapshot, NULL, 2, 0);
	ScanKeyData keys[2];
	bool		found;

	key_equals(&keys[0], index, cache_key);
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTGreaterEqualStrategyNumber, InvalidOid, InvalidOid,
						   F_XID8GE, FullTransactionIdGetDatum(since));
	index_rescan(scan, keys, 2, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/* No committed write of the key or its whole cache that the entry's snapshot did not see. */
static bool
no_writer_since(Layout *at, text *cache_name, text *cache_key, FullTransactionId computed_xmin, Snapshot snapshot)
{
	Relation	index;
	Relation	heap = open_checked(at->invalidations, &index);
	bool		current = !invalidated_since(heap, index, cache_key, computed_xmin, snapshot)
		&& !invalidated_since(heap, index, cache_name, computed_xmin, snapshot);

	close_both(heap, index);
	return current;
}

/* The xmax of the statement's snapshot as a full id, as pg_snapshot_xmax(pg_current_snapshot()). */
static FullTransactionId
snapshot_xmax(void)
{
	LOCAL_FCINFO(call, 0);
	Datum		snapshot;

	InitFunctionCallInfoData(*call, NULL, 0, InvalidOid, NULL, NULL);
	snapshot = pg_current_snapshot(call);
	return DatumGetFullTransactionId(DirectFunctionCall1(pg_snapshot_xmax, snapshot));
}

static bool
duration_is_valid(Interval *duration)
{
	Interval	zero = {0};
	Interval	longest = {0};

	longest.day = 366;
	return DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(duration), IntervalPGetDatum(&zero))) > 0
		&& DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(duration),
											 IntervalPGetDatum(&longest))) <= 0;
}

/* The quick proof of get_or_compute (sql/migrations/0018), on the entry just read. */
static bool
entry_is_servable(Entry *entry, TimestampTz now, Interval *duration)
{
	TimestampTz oldest_allowed = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
																		 TimestampTzGetDatum(now),
																		 IntervalPGetDatum(duration)));

	return entry->expires_at > now && entry->created_at > oldest_allowed
		&& FullTransactionIdPrecedesOrEquals(entry->computed_xmax, snapshot_xmax());
}

/* The owner's test clock (cachelib.now) is the SQL engine's business. */
static bool
clock_is_overridden(void)
{
	const char *now = GetConfigOption("cachelib.now", true, false);

	return now != NULL && now[0] != '\0';
}
Datum
hit_fast(PG_FUNCTION_ARGS)
{
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	text	   *cache_name;
	text	   *cache_key;
	Interval   *duration;
	Entry		entry;
	Layout	   *at;
	bool		servable;
	double		elapsed_ms;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	/*
	 * What the SQL engine decides: own writes, standbys, read-only callers, a test clock, and
	 * SERIALIZABLE callers (their reads must leave predicate locks; left to the executor rather
	 * than reasoned about here).
	 */
	if (XactReadOnly || RecoveryInProgress() || FullTransactionIdIsValid(GetTopFullTransactionIdIfAny())
		|| IsolationIsSerializable() || clock_is_overridden())
		PG_RETURN_NULL();
	cache_name = PG_GETARG_TEXT_PP(0);
	cache_key = PG_GETARG_TEXT_PP(1);
	duration = PG_GETARG_INTERVAL_P(2);
	if (!duration_is_valid(duration))
		PG_RETURN_NULL();

	/* A snapshot of its own, as a statement in a PL/pgSQL function takes. */
	at = current_layout();
	PushActiveSnapshot(GetTransactionSnapshot());
	servable = read_entry(at, cache_key, GetActiveSnapshot(), &entry)
		&& entry_is_servable(&entry, now, duration)
		&& no_writer_since(at, cache_name, cache_key, entry.computed_xmin, GetActiveSnapshot());
	PopActiveSnapshot();
	/* A table changed under us while we opened it (a migration): let the SQL engine answer this once. */
	if (!servable || !at->valid)
		PG_RETURN_NULL();

	elapsed_ms = (double) (GetCurrentTimestamp() - started) / 1000.0;
	if (!count_hits(text_to_cstring(cache_name), text_to_cstring(cache_key), entry.created_at, now, now, 1,
					elapsed_ms, entry.compute_ms))
	{
		SPI_connect();
		append_hit(cache_name, cache_key, now, elapsed_ms, entry.compute_ms);
		SPI_finish();
	}
	PG_RETURN_DATUM(entry.data);
}
static void
put_back(DrainedHits *drained)
{
	for (int i = 0; i < drained->count; i++)
	{
		HitSlot    *s = &drained->slots[i];

		if (!count_hits(s->cache_name, s->cache_key, s->entry_created_at, s->first_hit_at,
						s->last_hit_at, s->hits, s->elapsed_ms, s->compute_ms))
			elog(WARNING, "pgcache_hit: %lld hits of %s could not be put back after an aborted drain",
				 (long long) s->hits, s->cache_key);
	}
}

/* A drain whose transaction aborts puts its sums back: nothing counted is lost to an error. */
static void
restore_on_abort(XactEvent event, void *arg)
{
	DrainedHits *drained = drained_this_transaction;

	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PARALLEL_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE)
		return;					/* the commit may still fail: decide at its end */
	drained_this_transaction = NULL;
	if (event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT)
		return;
	for (; drained != NULL; drained = drained->earlier)
		put_back(drained);
}

/*
 * The same for a subtransaction (a PL/pgSQL block with an EXCEPTION clause, a savepoint): the
 * roll-up runs inside one (try_rollup), and its events go when it aborts, so its drains go back.
 */
static void
restore_on_subabort(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	DrainedHits **link = &drained_this_transaction;

	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	while (*link != NULL)
	{
		DrainedHits *drained = *link;

		if (drained->subid != mySubid)
			link = &drained->earlier;
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
		{
			drained->subid = parentSubid;	/* now the parent's to keep or give back */
			link = &drained->earlier;
		}
		else
		{
			put_back(drained);
			*link = drained->earlier;
		}
	}
}

/*
 * Hand over this database's sums and free every slot; other databases' sums are put back.
 * (Slots are freed all at once because a probe chain ends at the first free slot.)
 */
static DrainedHits *
take_this_databases_slots(void)
{
	HitTable   *table = attach_hit_table();
	DrainedHits *drained = MemoryContextAllocZero(TopTransactionContext, sizeof(DrainedHits));
	HitSlot    *others = palloc(sizeof(HitSlot) * HIT_SLOTS);
	int			other_count = 0;

	drained->slots = MemoryContextAlloc(TopTransactionContext, sizeof(HitSlot) * HIT_SLOTS);
	LWLockAcquire(&table->lock, LW_EXCLUSIVE);
	for (int i = 0; i < HIT_SLOTS; i++)
	{
		HitSlot    *slot = &table->slots[i];

		if (slot->used && slot->hits > 0)
		{
			if (slot->database == MyDatabaseId)
				drained->slots[drained->count++] = *slot;
			else
				others[other_count++] = *slot;
		}
		slot->used = false;
		slot->hits = 0;
	}
	for (int i = 0; i < other_count; i++)
	{
		HitSlot    *o = &others[i];
		HitSlot    *slot = find_slot(table, o->database, o->cache_name, o->cache_key, o->entry_created_at,
									 o->hour, true);

		if (slot != NULL)
			add_to_slot(slot, o->hits, o->elapsed_ms, o->compute_ms, o->first_hit_at, o->last_hit_at);
		else					/* they fitted before in a fuller table; a new order could, in theory, not */
			elog(WARNING, "pgcache_hit: %lld hits of %s in database %u could not be kept",
				 (long long) o->hits, o->cache_key, o->database);
	}
	LWLockRelease(&table->lock);
	pfree(others);
	return drained;
}

Datum
drain_fast_hits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DrainedHits *drained;

	InitMaterializedSRF(fcinfo, 0);
	if (!callback_registered)
	{
		RegisterXactCallback(restore_on_abort, NULL);
		RegisterSubXactCallback(restore_on_subabort, NULL);
		callback_registered = true;
	}
	drained = take_this_databases_slots();
	drained->subid = GetCurrentSubTransactionId();
	drained->earlier = drained_this_transaction;
	drained_this_transaction = drained;
	for (int i = 0; i < drained->count; i++)
	{
		HitSlot    *s = &drained->slots[i];
		Datum		values[8] = {
			CStringGetTextDatum(s->cache_name), CStringGetTextDatum(s->cache_key),
			TimestampTzGetDatum(s->entry_created_at), Int64GetDatum(s->hits),
			Float8GetDatum(s->elapsed_ms), Float8GetDatum(s->compute_ms),
			TimestampTzGetDatum(s->first_hit_at), TimestampTzGetDatum(s->last_hit_at)
		};
		bool		nulls[8] = {0};

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
