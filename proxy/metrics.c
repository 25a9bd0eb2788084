/*
 * metrics: the registry behind METRICS_TABLE and its text exposition (see metrics.h).
 *
 * Each metric is a "family". Counter and gauge families keep their series in an array, in the
 * order they were created (that is also the render order), indexed by a small open-addressing
 * hash table keyed by the label values. Histogram families have no labels, so they hold their
 * bucket counts inline. Label values are sanitised (valid UTF-8, no control characters but
 * '\n', bounded length) before they are hashed or stored, so a lookup with the raw value finds
 * the series it created and nothing a client sends can break the exposition.
 */
#include "proxy/metrics.h"

#include "proxy/log.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#ifndef PROMGUARD_VERSION
#define PROMGUARD_VERSION "dev"
#endif

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Label names a metric may have: the update API passes at most two values. */
#define METRICS_MAX_LABELS 2
/* Bytes of the comma-separated label-name list in the table, terminator included. */
#define METRICS_LABEL_NAMES_MAX 64
/* Bytes kept of one label value (longer values are cut at a character boundary). */
#define METRICS_LABEL_VALUE_MAX 128
/* Most upper bounds in one bucket set (+Inf excluded). */
#define METRICS_MAX_BUCKETS 15
/* Label value of the series that collects updates past METRICS_MAX_SERIES. */
#define METRICS_OTHER "other"

/* Hash-table sizing: a power of two, grown before it is three quarters full. */
#define SLOTS_INITIAL 8u
#define SLOTS_FULL(nused, nslots) ((size_t)(nused) * 4 >= (size_t)(nslots) * 3)

/* Integral values below this magnitude are printed exactly, without an exponent. */
#define EXACT_INT_LIMIT 9007199254740992.0 /* 2^53 */

/* Longest number we print: "-" + 17 digits + "." + "e-308" fits easily. */
#define NUM_BUF 32

/* One row of METRICS_TABLE. */
struct metric_def {
	const char *name;             /* exported name */
	enum metrics_type type;       /* counter, gauge or histogram */
	const char *labels;           /* comma-separated label names, "" for none */
	enum metrics_buckets buckets; /* bucket set (histograms only) */
	const char *help;             /* # HELP text */
};

#define METRICS_DEF_(id, name, type, labels, buckets, help) \
	[METRICS_##id] = { name, type, labels, buckets, help },
static const struct metric_def defs[METRICS__COUNT] = { METRICS_TABLE(METRICS_DEF_) };
#undef METRICS_DEF_

/* The label-name list is copied into a fixed buffer at init; check its size at compile time. */
#define METRICS_CHECK_(id, name, type, labels, buckets, help) \
	_Static_assert(sizeof(labels) <= METRICS_LABEL_NAMES_MAX, "label names of " name " too long");
METRICS_TABLE(METRICS_CHECK_)
#undef METRICS_CHECK_

/* Upper bounds of each bucket set, ascending. */
static const double b_seconds[] = { .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60 };
static const double b_series[] = { 1, 10, 100, 1000, 10000, 100000, 1e6, 1e7 };
static const double b_ratio[] = { .01, .1, .25, .5, .8, 1.25, 2, 4, 10, 100 };

_Static_assert(ARRAY_LEN(b_seconds) <= METRICS_MAX_BUCKETS, "b_seconds too long");
_Static_assert(ARRAY_LEN(b_series) <= METRICS_MAX_BUCKETS, "b_series too long");
_Static_assert(ARRAY_LEN(b_ratio) <= METRICS_MAX_BUCKETS, "b_ratio too long");

static const struct {
	const double *le; /* upper bounds (ref, static) */
	unsigned n;       /* number of bounds */
} bucket_sets[] = {
	[METRICS_B_NONE] = { NULL, 0 },
	[METRICS_B_SECONDS] = { b_seconds, ARRAY_LEN(b_seconds) },
	[METRICS_B_SERIES] = { b_series, ARRAY_LEN(b_series) },
	[METRICS_B_RATIO] = { b_ratio, ARRAY_LEN(b_ratio) },
};

/* One labelled value of a counter or gauge. */
struct series {
	char *values[METRICS_MAX_LABELS]; /* sanitised label values; all point into values[0]'s block */
	uint32_t hash;                    /* hash of the values, kept for rehashing */
	double value;                     /* current value */
};

/* Everything the registry holds for one metric. */
struct family {
	char names_buf[METRICS_LABEL_NAMES_MAX];  /* copy of the label-name list, commas cut to NULs */
	const char *names[METRICS_MAX_LABELS];    /* label names, pointing into names_buf */
	unsigned nlabels;                         /* number of label names */
	int tenant_label;                         /* index of the "tenant" label name, or -1 */
	/* The last label values looked up, as given (before sanitising), and their series: most
	 * updates repeat the previous one's labels (one tenant, status 200), and the lookup
	 * (sanitise, tenant table, hash, probe) was ~500 instructions, six times per request. */
	char last_raw[METRICS_MAX_LABELS][METRICS_LABEL_VALUE_MAX + 1];
	uint32_t last_idx;                        /* series index of last_raw */
	int last_ok;                              /* last_raw/last_idx are valid */
	struct series *series;                    /* series in creation order (counters, gauges) */
	uint32_t nseries;                         /* series in use */
	uint32_t series_cap;                      /* series allocated */
	uint32_t *slots;                          /* hash table: 0 = empty, else series index + 1 */
	uint32_t nslots;                          /* slots allocated, a power of two */
	int overflowed;                           /* 1 once the label-set cap was hit (logged once) */
	uint64_t buckets[METRICS_MAX_BUCKETS + 1]; /* histogram: per-bucket (not cumulative) counts, +Inf last */
	uint64_t count;                           /* histogram: observations */
	double sum;                               /* histogram: sum of observations */
};

static struct family families[METRICS__COUNT];
static int initialised;

/*
 * Distinct values of "tenant" labels, capped (admin.max_tenant_labels): tenant names come from a
 * client header, so without a cap one client could mint a series per request. A tenant seen
 * while there was room keeps its own series for the life of the process; past the cap a new
 * tenant is counted as tenant="other". Open addressing over sanitised names.
 */
static struct {
	char **names;         /* slots: NULL or a strdup'ed sanitised name */
	size_t nslots;        /* a power of two */
	size_t n;             /* names held */
	size_t limit;         /* the cap */
	int64_t last_log_ms;  /* one "tenant label cap reached" line per minute */
	uint64_t suppressed;  /* tenants folded since that line */
} tenants = { .limit = METRICS_TENANT_LABELS_DEFAULT };

/* ---- label values ------------------------------------------------------------------- */

/*
 * Length of the well-formed UTF-8 sequence starting at <s> (whose first byte is >= 0x80), or
 * 0 if it is not one (stray continuation byte, overlong form, surrogate, above U+10FFFF, or
 * cut short). Follows Unicode table 3-7. Stops at the NUL terminator, which is never a
 * continuation byte, so it never reads past the string.
 */
static size_t utf8_seq_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
	size_t len;

	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3;
		if (s[0] == 0xe0)
			lo = 0xa0; /* no overlongs */
		else if (s[0] == 0xed)
			hi = 0x9f; /* no UTF-16 surrogates */
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4;
		if (s[0] == 0xf0)
			lo = 0x90; /* no overlongs */
		else if (s[0] == 0xf4)
			hi = 0x8f; /* nothing above U+10FFFF */
	} else {
		return 0;
	}
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/*
 * Copy <src> (NULL reads as "") into <dst> (METRICS_LABEL_VALUE_MAX + 1 bytes) as a safe label
 * value: each byte that is not part of well-formed UTF-8, and each control character except
 * '\n' (which the exposition escapes), becomes '?'. Stops at METRICS_LABEL_VALUE_MAX bytes,
 * on a character boundary, so a huge value costs no more than a short one.
 */
static void label_sanitise(char *dst, const char *src)
{
	const unsigned char *s = (const unsigned char *)(src ? src : "");
	size_t o = 0;

	while (*s) {
		size_t len = 1;

		if (*s >= 0x80)
			len = utf8_seq_len(s);
		if (o + (len ? len : 1) > METRICS_LABEL_VALUE_MAX)
			break;
		if (len == 0 || (*s < 0x20 && *s != '\n') || *s == 0x7f) {
			dst[o++] = '?';
			s++;
		} else {
			memcpy(dst + o, s, len);
			o += len;
			s += len;
		}
	}
	dst[o] = '\0';
}

/* FNV-1a over the label values, each with its terminator so ("ab","c") != ("a","bc"). */
static uint32_t labels_hash(const char *const *vals, unsigned n)
{
	uint32_t h = 2166136261u;

	for (unsigned i = 0; i < n; i++) {
		const unsigned char *p = (const unsigned char *)vals[i];

		do {
			h ^= *p;
			h *= 16777619u;
		} while (*p++);
	}
	return h;
}

/* ---- series table ------------------------------------------------------------------- */

/* Index of the series of <f> with label values <vals> and hash <hash>, or -1. */
static int64_t series_find(const struct family *f, const char *const *vals, uint32_t hash)
{
	uint32_t mask = f->nslots - 1;

	if (f->nslots == 0)
		return -1;
	for (uint32_t i = hash & mask;; i = (i + 1) & mask) {
		const struct series *s;
		unsigned l;

		if (f->slots[i] == 0)
			return -1;
		s = &f->series[f->slots[i] - 1];
		if (s->hash != hash)
			continue;
		for (l = 0; l < f->nlabels && strcmp(s->values[l], vals[l]) == 0; l++)
			;
		if (l == f->nlabels)
			return f->slots[i] - 1;
	}
}

/* Put series index <idx> with <hash> into the free slot its probe sequence reaches first. */
static void slot_place(struct family *f, uint32_t idx, uint32_t hash)
{
	uint32_t mask = f->nslots - 1;
	uint32_t i = hash & mask;

	while (f->slots[i] != 0)
		i = (i + 1) & mask;
	f->slots[i] = idx + 1;
}

/* Make room in <f> for one more series: grows the array and the hash table. 0 or -ENOMEM. */
static int series_reserve(struct family *f)
{
	if (f->nseries == f->series_cap) {
		uint32_t cap = f->series_cap ? f->series_cap * 2 : 4;
		struct series *n = realloc(f->series, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		f->series = n;
		f->series_cap = cap;
	}
	if (f->nslots == 0 || SLOTS_FULL(f->nseries + 1, f->nslots)) {
		uint32_t nslots = f->nslots ? f->nslots * 2 : SLOTS_INITIAL;
		uint32_t *slots = calloc(nslots, sizeof(*slots));

		if (!slots)
			return -ENOMEM;
		free(f->slots);
		f->slots = slots;
		f->nslots = nslots;
		for (uint32_t i = 0; i < f->nseries; i++)
			slot_place(f, i, f->series[i].hash);
	}
	return 0;
}

/*
 * Append a series with value 0 and copies of the label values <vals> to <f>. Returns it, or
 * NULL when memory runs out (the family is unchanged).
 */
static struct series *series_insert(struct family *f, const char *const *vals, uint32_t hash)
{
	size_t len[METRICS_MAX_LABELS], total = 1;
	struct series *s;
	char *block;

	if (series_reserve(f) < 0)
		return NULL;
	for (unsigned i = 0; i < f->nlabels; i++) {
		len[i] = strlen(vals[i]) + 1;
		total += len[i];
	}
	/* one block for all values; the extra byte keeps it non-empty for label-less series */
	block = malloc(total);
	if (!block)
		return NULL;
	s = &f->series[f->nseries];
	memset(s, 0, sizeof(*s));
	s->values[0] = block;
	for (unsigned i = 0; i < f->nlabels; i++) {
		s->values[i] = block;
		memcpy(block, vals[i], len[i]);
		block += len[i];
	}
	s->hash = hash;
	slot_place(f, f->nseries, hash);
	f->nseries++;
	return s;
}

/* Find or create the all-"other" series of <id>, counting the overflow. NULL on -ENOMEM. */
static struct series *series_other(enum metrics_id id)
{
	static const char *const other[METRICS_MAX_LABELS] = { METRICS_OTHER, METRICS_OTHER };
	struct family *f = &families[id];
	uint32_t hash = labels_hash(other, f->nlabels);
	int64_t idx = series_find(f, other, hash);

	if (!f->overflowed) {
		f->overflowed = 1;
		log_warn("metric label-set cap reached, folding new label sets into \"other\"",
			 "metric=%s cap=%d", defs[id].name, METRICS_MAX_SERIES);
	}
	/* the overflow counter is capped like any other metric, but never counts itself */
	if (id != METRICS_LABEL_OVERFLOW)
		metrics_add(METRICS_LABEL_OVERFLOW, defs[id].name, NULL, 1.0);
	return idx >= 0 ? &f->series[idx] : series_insert(f, other, hash);
}

/*
 * The series of counter or gauge <id> for label values <l1>, <l2> (values past the metric's
 * label count are ignored, NULL reads as ""). With <create>, a missing series is created, or
 * folded into "other" past METRICS_MAX_SERIES; without, NULL is returned for it. Also NULL
 * before metrics_init() and when memory runs out: the update is then dropped.
 */
static uint32_t str_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Double the tenant table (or make the first one). -ENOMEM leaves it as it was. */
static int tenants_grow(void)
{
	size_t nslots = tenants.nslots ? tenants.nslots * 2 : 64;
	char **slots = calloc(nslots, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < tenants.nslots; i++) {
		if (!tenants.names[i])
			continue;
		size_t j = str_hash(tenants.names[i]) & (nslots - 1);
		while (slots[j])
			j = (j + 1) & (nslots - 1);
		slots[j] = tenants.names[i];
	}
	free(tenants.names);
	tenants.names = slots;
	tenants.nslots = nslots;
	return 0;
}

/*
 * The label value for tenant <t> (sanitised): itself if known or there is room, else "other".
 * A lookup (<create> 0) neither takes room nor counts: an unknown tenant is then itself.
 */
static const char *tenant_label(const char *t, int create)
{
	size_t j;

	if (tenants.nslots) {
		for (j = str_hash(t) & (tenants.nslots - 1); tenants.names[j]; j = (j + 1) & (tenants.nslots - 1))
			if (strcmp(tenants.names[j], t) == 0)
				return t;
	}
	if (!create)
		return t;
	if (tenants.n >= tenants.limit || strcmp(t, METRICS_OTHER) == 0 ||
	    (SLOTS_FULL(tenants.n + 1, tenants.nslots) && tenants_grow() < 0)) {
		int64_t now = mono_ms();
		metrics_add(METRICS_TENANT_LABEL_OVERFLOW, NULL, NULL, 1.0);
		if (now - tenants.last_log_ms >= 60000) {
			log_warn("tenant label cap reached", "tenant=%s limit=admin.max_tenant_labels value=%zu "
				 "counted_as=other suppressed=%llu", t, tenants.limit,
				 (unsigned long long)tenants.suppressed);
			tenants.last_log_ms = now;
			tenants.suppressed = 0;
		} else {
			tenants.suppressed++;
		}
		return METRICS_OTHER;
	}
	for (j = str_hash(t) & (tenants.nslots - 1); tenants.names[j]; j = (j + 1) & (tenants.nslots - 1))
		;
	tenants.names[j] = strdup(t);
	if (!tenants.names[j])
		return METRICS_OTHER;
	tenants.n++;
	metrics_set(METRICS_TENANT_LABELS, NULL, NULL, (double)tenants.n);
	return t;
}

void metrics_set_tenant_limit(size_t n)
{
	/* a raised cap may give a tenant counted as "other" its own series from now on */
	for (unsigned id = 0; id < METRICS__COUNT; id++)
		families[id].last_ok = 0;
	tenants.limit = n;
	metrics_set(METRICS_TENANT_LABELS_LIMIT, NULL, NULL, (double)n);
}

/* 1 if label values <raw> (NULL reads as "") are the ones <f> looked up last. */
static int last_hit(const struct family *f, const char *const *raw)
{
	if (!f->last_ok)
		return 0;
	for (unsigned i = 0; i < f->nlabels; i++)
		if (strcmp(f->last_raw[i], raw[i] ? raw[i] : "") != 0)
			return 0;
	return 1;
}

/* Remember that <raw> found series <idx>, unless a value is too long to keep whole. */
static void last_keep(struct family *f, const char *const *raw, uint32_t idx)
{
	f->last_ok = 0;
	for (unsigned i = 0; i < f->nlabels; i++) {
		const char *r = raw[i] ? raw[i] : "";
		size_t len = strnlen(r, METRICS_LABEL_VALUE_MAX + 1);

		if (len > METRICS_LABEL_VALUE_MAX)
			return;
		memcpy(f->last_raw[i], r, len + 1);
	}
	f->last_idx = idx;
	f->last_ok = 1;
}

static struct series *series_get(enum metrics_id id, const char *l1, const char *l2, int create)
{
	char buf[METRICS_MAX_LABELS][METRICS_LABEL_VALUE_MAX + 1];
	const char *raw[METRICS_MAX_LABELS] = { l1, l2 };
	const char *vals[METRICS_MAX_LABELS];
	struct family *f = &families[id];
	uint32_t hash;
	int64_t idx;

	if (!initialised)
		return NULL;
	/* A label-less metric has exactly one series, made by metrics_init: most updates are these
	 * (gauges set per request), so they skip hashing and probing. */
	if (f->nlabels == 0 && f->nseries == 1)
		return &f->series[0];
	if (last_hit(f, raw))
		return &f->series[f->last_idx];
	for (unsigned i = 0; i < f->nlabels; i++) {
		label_sanitise(buf[i], raw[i]);
		vals[i] = (int)i == f->tenant_label ? tenant_label(buf[i], create) : buf[i];
	}
	hash = labels_hash(vals, f->nlabels);
	idx = series_find(f, vals, hash);
	/* Not kept when the tenant was folded into "other": each such update must count its overflow. */
	if (idx >= 0 && (f->tenant_label < 0 || vals[f->tenant_label] == buf[f->tenant_label]))
		last_keep(f, raw, (uint32_t)idx);
	if (idx >= 0)
		return &f->series[idx];
	if (!create)
		return NULL;
	if (f->nseries >= METRICS_MAX_SERIES)
		return series_other(id);
	return series_insert(f, vals, hash);
}

/* 1 if <id> names a metric of type <type>; a mismatch is a programming error. */
static int id_is(enum metrics_id id, enum metrics_type type)
{
	int ok = (unsigned)id < METRICS__COUNT && defs[id].type == type;

	assert(ok);
	return ok;
}

/* 1 if <id> names a counter or a gauge. */
static int id_is_scalar(enum metrics_id id)
{
	int ok = (unsigned)id < METRICS__COUNT && defs[id].type != METRICS_HISTOGRAM;

	assert(ok);
	return ok;
}

/* ---- updates ------------------------------------------------------------------------ */

void metrics_add(enum metrics_id id, const char *l1, const char *l2, double v)
{
	struct series *s;

	if (!id_is_scalar(id))
		return;
	/* counters only grow; !(v >= 0) also drops NaN */
	if (defs[id].type == METRICS_COUNTER && !(v >= 0))
		return;
	s = series_get(id, l1, l2, 1);
	if (s)
		s->value += v;
}

/*
 * Gauges, and counters whose owner keeps the running total itself (a set value must then
 * never go down; that is the owner's contract, not checked here).
 */
void metrics_set(enum metrics_id id, const char *l1, const char *l2, double v)
{
	struct series *s;

	if (!id_is_scalar(id))
		return;
	s = series_get(id, l1, l2, 1);
	if (s)
		s->value = v;
}

/* NaN observations are dropped: they would poison _sum for the life of the process. */
void metrics_observe(enum metrics_id id, double v)
{
	struct family *f;
	unsigned b = 0;

	if (!id_is(id, METRICS_HISTOGRAM) || isnan(v))
		return;
	f = &families[id];
	/* the first bucket whose bound holds v; past the last bound is the +Inf bucket */
	while (b < bucket_sets[defs[id].buckets].n && v > bucket_sets[defs[id].buckets].le[b])
		b++;
	f->buckets[b]++;
	f->count++;
	f->sum += v;
}

/* Reads only: never creates a series, so a label set never used reads 0 even past the cap. */
double metrics_get(enum metrics_id id, const char *l1, const char *l2)
{
	struct series *s;

	if (!id_is_scalar(id))
		return 0;
	s = series_get(id, l1, l2, 0);
	return s ? s->value : 0;
}

/* ---- process metrics ---------------------------------------------------------------- */

/* Resident set size in bytes from /proc/self/statm, or -1. */
static double process_rss(void)
{
	unsigned long long pages;
	long page_size = sysconf(_SC_PAGESIZE);
	FILE *fp = fopen("/proc/self/statm", "re");
	int n;

	if (!fp)
		return -1;
	n = fscanf(fp, "%*u %llu", &pages);
	fclose(fp);
	if (n != 1 || page_size <= 0)
		return -1;
	return (double)pages * (double)page_size;
}

/* Open descriptors, from the entries of /proc/self/fd, or -1. */
static double process_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	double n = 0;
	int own;

	if (!d)
		return -1;
	/* the listing includes the descriptor opendir() itself holds: leave it out */
	own = dirfd(d);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == own)
			continue;
		n++;
	}
	closedir(d);
	return n;
}

/* Without /proc (not Linux, or not mounted) the gauges keep their last value. */
void metrics_refresh_process(void)
{
	double rss = process_rss();
	double fds = process_fds();

	if (rss >= 0)
		metrics_set(METRICS_PROCESS_RSS, NULL, NULL, rss);
	if (fds >= 0)
		metrics_set(METRICS_PROCESS_FDS, NULL, NULL, fds);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

/* Split the label-name list of <id> into families[id].names. */
static void family_init_labels(enum metrics_id id)
{
	struct family *f = &families[id];
	char *p = f->names_buf;

	f->tenant_label = -1;
	if (defs[id].labels[0] == '\0')
		return;
	memcpy(f->names_buf, defs[id].labels, strlen(defs[id].labels) + 1);
	for (;;) {
		char *comma = strchr(p, ',');

		/* a third label would have no value in the update API: a table error */
		assert(f->nlabels < METRICS_MAX_LABELS);
		if (f->nlabels == METRICS_MAX_LABELS)
			return;
		if (comma)
			*comma = '\0';
		if (strcmp(p, "tenant") == 0)
			f->tenant_label = (int)f->nlabels;
		f->names[f->nlabels++] = p;
		if (!comma)
			return;
		p = comma + 1;
	}
}

/*
 * Already initialised: returns 0 and keeps every value. Otherwise creates the label-less
 * series (so they render 0 before first use), build_info and process_start_time_seconds.
 * On -ENOMEM nothing is left allocated.
 */
int metrics_init(void)
{
	struct series *build;
	struct timeval tv;

	if (initialised)
		return 0;
	initialised = 1;
	for (unsigned id = 0; id < METRICS__COUNT; id++) {
		family_init_labels((enum metrics_id)id);
		if (defs[id].type != METRICS_HISTOGRAM && families[id].nlabels == 0 &&
		    !series_get((enum metrics_id)id, NULL, NULL, 1))
			goto fail;
	}
	build = series_get(METRICS_BUILD_INFO, PROMGUARD_VERSION, NULL, 1);
	if (!build)
		goto fail;
	build->value = 1;
	metrics_set(METRICS_TENANT_LABELS_LIMIT, NULL, NULL, (double)tenants.limit);
	gettimeofday(&tv, NULL);
	metrics_set(METRICS_PROCESS_START, NULL, NULL, (double)tv.tv_sec + (double)tv.tv_usec / 1e6);
	return 0;
fail:
	metrics_deinit();
	return -ENOMEM;
}

void metrics_deinit(void)
{
	for (unsigned id = 0; id < METRICS__COUNT; id++) {
		struct family *f = &families[id];

		for (uint32_t i = 0; i < f->nseries; i++)
			free(f->series[i].values[0]);
		free(f->series);
		free(f->slots);
		memset(f, 0, sizeof(*f));
	}
	for (size_t i = 0; i < tenants.nslots; i++)
		free(tenants.names[i]);
	free(tenants.names);
	tenants.names = NULL;
	tenants.nslots = tenants.n = 0;
	tenants.last_log_ms = 0;
	tenants.suppressed = 0;
	initialised = 0;
}

/* ---- exposition --------------------------------------------------------------------- */

/*
 * Format <v> into <buf> (NUM_BUF bytes): integral values below 2^53 as plain integers, the
 * infinities as +Inf/-Inf, NaN as NaN, anything else as the shortest %.{15,16,17}g that
 * reads back as the same double (so 0.1 prints "0.1", never "0.10000000000000001").
 */
static const char *fmt_num(char *buf, double v)
{
	if (isnan(v))
		return "NaN";
	if (isinf(v))
		return v > 0 ? "+Inf" : "-Inf";
	if (v == floor(v) && fabs(v) < EXACT_INT_LIMIT) {
		snprintf(buf, NUM_BUF, "%lld", (long long)v);
		return buf;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, NUM_BUF, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
}

/* Writes to one evbuffer, remembering whether any of them failed. */
struct out {
	struct evbuffer *buf; /* destination (ref) */
	int failed;           /* 1 once an append failed */
};

static void out_str(struct out *o, const char *s)
{
	if (evbuffer_add(o->buf, s, strlen(s)) < 0)
		o->failed = 1;
}

static void out_fmt(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct out *o, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (evbuffer_add_vprintf(o->buf, fmt, ap) < 0)
		o->failed = 1;
	va_end(ap);
}

/*
 * Write <s> escaped for the text format: '\\' and '\n' always, '"' too when <in_quotes>
 * (label values; HELP text leaves quotes alone). Copies the runs in between unchanged.
 */
static void out_escaped(struct out *o, const char *s, int in_quotes)
{
	const char *special = in_quotes ? "\\\n\"" : "\\\n";

	for (;;) {
		size_t run = strcspn(s, special);

		if (run && evbuffer_add(o->buf, s, run) < 0)
			o->failed = 1;
		s += run;
		if (*s == '\0')
			return;
		out_str(o, *s == '\n' ? "\\n" : *s == '"' ? "\\\"" : "\\\\");
		s++;
	}
}

static const char *type_name(enum metrics_type t)
{
	return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

/* `name{a="x",b="y"} value` for one counter or gauge series. */
static void render_series(struct out *o, const char *name, const struct family *f,
			  const struct series *s)
{
	char num[NUM_BUF];

	out_str(o, name);
	for (unsigned l = 0; l < f->nlabels; l++) {
		out_fmt(o, "%s%s=\"", l ? "," : "{", f->names[l]);
		out_escaped(o, s->values[l], 1);
		out_str(o, "\"");
	}
	out_fmt(o, "%s %s\n", f->nlabels ? "}" : "", fmt_num(num, s->value));
}

/* _bucket lines (cumulative, +Inf last), then _sum and _count. */
static void render_histogram(struct out *o, enum metrics_id id)
{
	const struct family *f = &families[id];
	unsigned n = bucket_sets[defs[id].buckets].n;
	char le[NUM_BUF], num[NUM_BUF];
	uint64_t cum = 0;

	for (unsigned b = 0; b <= n; b++) {
		cum += f->buckets[b];
		out_fmt(o, "%s_bucket{le=\"%s\"} %llu\n", defs[id].name,
			b < n ? fmt_num(le, bucket_sets[defs[id].buckets].le[b]) : "+Inf",
			(unsigned long long)cum);
	}
	out_fmt(o, "%s_sum %s\n", defs[id].name, fmt_num(num, f->sum));
	out_fmt(o, "%s_count %llu\n", defs[id].name, (unsigned long long)f->count);
}

/* On -ENOMEM <out> may hold part of the exposition; the caller discards it. */
int metrics_render(struct evbuffer *out)
{
	struct out o = { out, 0 };

	for (unsigned id = 0; id < METRICS__COUNT; id++) {
		const struct family *f = &families[id];

		out_fmt(&o, "# HELP %s ", defs[id].name);
		out_escaped(&o, defs[id].help, 0);
		out_fmt(&o, "\n# TYPE %s %s\n", defs[id].name, type_name(defs[id].type));
		if (defs[id].type == METRICS_HISTOGRAM) {
			render_histogram(&o, (enum metrics_id)id);
			continue;
		}
		for (uint32_t i = 0; i < f->nseries; i++)
			render_series(&o, defs[id].name, f, &f->series[i]);
	}
	return o.failed ? -ENOMEM : 0;
}

void metrics_describe(struct evbuffer *out)
{
	for (unsigned id = 0; id < METRICS__COUNT; id++)
		evbuffer_add_printf(out, "%-44s %-9s %-16s %s\n", defs[id].name,
				    type_name(defs[id].type),
				    defs[id].labels[0] ? defs[id].labels : "-", defs[id].help);
}
