/* The peer table (see peer_table.h). */
#include "peer_table.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <net/if.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "identity.h"
#include "log.h"

/* A flood of announcements must not grow the table without bound. */
#define MAX_DISCOVERED  256
#define MAX_INSTANCE_ID 255
#define MAX_MODELS      256
#define MAX_MODEL_NAME  200
#define MAX_CANDIDATES  (MAX_DISCOVERED + 8)

typedef char fp_hex[IDENTITY_FP_HEX_LEN + 1];

typedef struct disc_entry {
	char *source;
	char *instance_id;
	char *name;     /* NULL when not announced (or invalid) */
	fp_hex fp;      /* announced; "" when unknown */
	fp_hex learned; /* from a health check that succeeded here; "" */
	char addr[HOSTPORT_TEXT_MAX];
	char host[HOSTPORT_HOST_MAX];
	uint16_t pairing_port;
	uint64_t seq; /* order of the last report, newest is highest */
	/* Paired fingerprints whose pinned check failed with -EPERM here:
	 * this address is someone else, do not probe it for them again. */
	fp_hex *refused;
	size_t n_refused;
} disc_entry;

typedef struct peer_state {
	peer_table *t;
	fp_hex fp;
	peer_status status;
	unsigned failures;
	double latency_ms; /* < 0: none yet */
	char *name;        /* from health; NULL: use the trust store's */
	char **models;
	size_t n_models;
	int64_t in_flight, capacity;
	int hot, has_temp;
	int accepting; /* takes peer inference requests now */
	int fl_enabled; /* 1 / 0 from its health answer, -1: not said */
	double temp_c;
	int64_t last_seen;
	char addr[HOSTPORT_TEXT_MAX]; /* the address that answered last */
	size_t cursor;                /* rotation over candidates while offline */
	/* the check in flight */
	peer_call *call;
	uint64_t started_ns;
	char call_addr[HOSTPORT_TEXT_MAX];
	char *probe_source, *probe_id; /* set when probing an unknown-fp device */
	char *body;
	size_t body_len;
	long http_status;
	bool too_big;
} peer_state;

struct peer_table {
	uv_loop_t *loop;
	trust_store *ts;
	peer_client *pc;
	fp_hex self;
	unsigned interval_ms, timeout_ms, fail_threshold;
	uv_timer_t tick, kick;
	int closing, open_handles;
	void (*closed)(void *ud);
	void *closed_ud;
	disc_entry **disc;
	size_t n_disc, cap_disc;
	uint64_t seq;
	bool warned_full;
	peer_state **ps;
	size_t n_ps, cap_ps;
};

/* ---- small helpers ---- */

static int normalise_fp(const char *in, fp_hex out)
{
	if (!in || strlen(in) != IDENTITY_FP_HEX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < IDENTITY_FP_HEX_LEN; i++) {
		char c = in[i];
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return -EINVAL;
		out[i] = c;
	}
	out[IDENTITY_FP_HEX_LEN] = '\0';
	return 0;
}

static const char *entry_fp(const disc_entry *e)
{
	return e->fp[0] ? e->fp : e->learned;
}

static int64_t wall_now(void)
{
	return (int64_t)time(NULL);
}

static void entry_free(disc_entry *e)
{
	if (!e)
		return;
	free(e->source);
	free(e->instance_id);
	free(e->name);
	free(e->refused);
	free(e);
}

static disc_entry *find_entry(const peer_table *t, const char *source, const char *id, size_t *at)
{
	for (size_t i = 0; i < t->n_disc; i++) {
		disc_entry *e = t->disc[i];
		if (strcmp(e->source, source) == 0 && strcmp(e->instance_id, id) == 0) {
			if (at)
				*at = i;
			return e;
		}
	}
	return NULL;
}

static void remove_entry_at(peer_table *t, size_t i)
{
	entry_free(t->disc[i]);
	memmove(&t->disc[i], &t->disc[i + 1], (t->n_disc - i - 1) * sizeof(*t->disc));
	t->n_disc--;
}

static peer_state *find_state(const peer_table *t, const char *fp, size_t *at)
{
	for (size_t i = 0; i < t->n_ps; i++)
		if (strcmp(t->ps[i]->fp, fp) == 0) {
			if (at)
				*at = i;
			return t->ps[i];
		}
	return NULL;
}

static void free_models(peer_state *ps)
{
	for (size_t i = 0; i < ps->n_models; i++)
		free(ps->models[i]);
	free(ps->models);
	ps->models = NULL;
	ps->n_models = 0;
}

static void end_call(peer_state *ps)
{
	ps->call = NULL;
	free(ps->probe_source);
	free(ps->probe_id);
	ps->probe_source = ps->probe_id = NULL;
	free(ps->body);
	ps->body = NULL;
	ps->body_len = 0;
	ps->http_status = 0;
	ps->too_big = false;
}

static void cancel_call(peer_state *ps)
{
	if (ps->call)
		peer_client_cancel(ps->call);
	end_call(ps);
}

static void state_free(peer_state *ps)
{
	cancel_call(ps);
	free(ps->name);
	free_models(ps);
	free(ps);
}

static const char *display_name(const peer_table *t, const peer_state *ps, const trusted_peer *p)
{
	if (ps && ps->name)
		return ps->name;
	if (!p && ps)
		p = trust_store_find(t->ts, ps->fp);
	return p && p->name ? p->name : "";
}

/* ---- state per paired peer ---- */

static peer_state *ensure_state(peer_table *t, const char *fp)
{
	peer_state *ps = find_state(t, fp, NULL);
	if (ps)
		return ps;
	if (t->n_ps == t->cap_ps) {
		size_t cap = t->cap_ps ? t->cap_ps * 2 : 8;
		peer_state **n = realloc(t->ps, cap * sizeof(*n));
		if (!n)
			return NULL;
		t->ps = n;
		t->cap_ps = cap;
	}
	ps = calloc(1, sizeof(*ps));
	if (!ps)
		return NULL;
	ps->t = t;
	memcpy(ps->fp, fp, sizeof(ps->fp));
	ps->latency_ms = -1;
	ps->in_flight = ps->capacity = -1;
	t->ps[t->n_ps++] = ps;
	return ps;
}

/* Make the states match the trust store: one per paired peer. */
static void sync_states(peer_table *t)
{
	for (size_t i = 0; i < t->n_ps;) {
		if (!trust_store_find(t->ts, t->ps[i]->fp)) {
			state_free(t->ps[i]);
			memmove(&t->ps[i], &t->ps[i + 1], (t->n_ps - i - 1) * sizeof(*t->ps));
			t->n_ps--;
		} else {
			i++;
		}
	}
	size_t n = trust_store_count(t->ts);
	for (size_t i = 0; i < n; i++) {
		const trusted_peer *p = trust_store_at(t->ts, i);
		if (strcmp(p->fingerprint_hex, t->self) != 0)
			ensure_state(t, p->fingerprint_hex);
	}
}

static void set_offline(peer_state *ps, const char *why)
{
	if (ps->status == PEER_CONNECTED)
		log_info("peer %s (%.16s...) is offline: %s", display_name(ps->t, ps, NULL), ps->fp,
		         why);
	ps->status = PEER_OFFLINE;
}

/* ---- health checks ---- */

typedef struct candidate {
	const char *addr;
	const disc_entry *probe; /* non-NULL: unknown-fingerprint device */
} candidate;

static bool has_refused(const disc_entry *e, const char *fp)
{
	for (size_t i = 0; i < e->n_refused; i++)
		if (strcmp(e->refused[i], fp) == 0)
			return true;
	return false;
}

static void add_candidate(candidate *c, size_t *n, const char *addr, const disc_entry *probe)
{
	if (*n >= MAX_CANDIDATES || !addr || !*addr)
		return;
	for (size_t i = 0; i < *n; i++)
		if (strcmp(c[i].addr, addr) == 0)
			return;
	c[(*n)++] = (candidate){addr, probe};
}

/* Where to look for `ps`, best first: devices announcing its fingerprint
 * (newest first), its addresses in the trust store, then devices whose
 * fingerprint is unknown (static entries) that did not refuse it. */
static size_t candidates(const peer_table *t, const peer_state *ps, candidate *c)
{
	size_t n = 0;
	const disc_entry *sorted[MAX_DISCOVERED];
	size_t ns = 0;
	for (size_t i = 0; i < t->n_disc && ns < MAX_DISCOVERED; i++)
		sorted[ns++] = t->disc[i];
	/* insertion sort by seq, newest first (small n) */
	for (size_t i = 1; i < ns; i++)
		for (size_t j = i; j > 0 && sorted[j]->seq > sorted[j - 1]->seq; j--) {
			const disc_entry *x = sorted[j];
			sorted[j] = sorted[j - 1];
			sorted[j - 1] = x;
		}
	for (size_t i = 0; i < ns; i++)
		if (strcmp(entry_fp(sorted[i]), ps->fp) == 0)
			add_candidate(c, &n, sorted[i]->addr, NULL);
	const trusted_peer *p = trust_store_find(t->ts, ps->fp);
	for (size_t i = 0; p && i < p->n_addresses; i++)
		add_candidate(c, &n, p->addresses[i], NULL);
	for (size_t i = 0; i < ns; i++)
		if (!entry_fp(sorted[i])[0] && !has_refused(sorted[i], ps->fp))
			add_candidate(c, &n, sorted[i]->addr, sorted[i]);
	return n;
}

static void check_failed(peer_state *ps, int result, const char *msg)
{
	peer_table *t = ps->t;
	if (result == -EPERM && ps->probe_source) {
		disc_entry *e = find_entry(t, ps->probe_source, ps->probe_id, NULL);
		if (e && !has_refused(e, ps->fp)) {
			fp_hex *r = realloc(e->refused, (e->n_refused + 1) * sizeof(*r));
			if (r) {
				e->refused = r;
				memcpy(e->refused[e->n_refused++], ps->fp, sizeof(fp_hex));
			}
		}
	}
	log_debug("health check of %.16s... at %s failed: %s", ps->fp, ps->call_addr,
	          msg && *msg ? msg : strerror(-result));
	if (ps->failures < UINT32_MAX)
		ps->failures++;
	if (ps->failures >= t->fail_threshold) {
		set_offline(ps, msg && *msg ? msg : strerror(-result));
		ps->cursor++;
	}
}

static bool valid_model_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_MODEL_NAME)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* Take what the peer said about itself; values are untrusted and kept
 * only when well-formed.  -EPROTO when the answer is not our JSON. */
static int apply_health(peer_state *ps, const char *body, size_t len)
{
	json_error_t jerr;
	json_t *root = json_loadb(body, len, 0, &jerr);
	if (!json_is_object(root)) {
		json_decref(root);
		return -EPROTO;
	}
	const char *name = json_string_value(json_object_get(root, "name"));
	if (name && trust_store_check_name(name, NULL) == 0) {
		if (!ps->name || strcmp(ps->name, name) != 0) {
			char *dup = strdup(name);
			if (dup) {
				free(ps->name);
				ps->name = dup;
			}
		}
	}
	json_t *models = json_object_get(root, "models");
	if (json_is_array(models)) {
		free_models(ps);
		size_t n = json_array_size(models);
		if (n > MAX_MODELS)
			n = MAX_MODELS;
		ps->models = calloc(n ? n : 1, sizeof(char *));
		for (size_t i = 0; ps->models && i < n; i++) {
			const char *m = json_string_value(json_array_get(models, i));
			if (m && valid_model_name(m) && (ps->models[ps->n_models] = strdup(m)))
				ps->n_models++;
		}
	}
	json_t *load = json_object_get(root, "load");
	json_t *inf = json_object_get(load, "in_flight"), *cap = json_object_get(load, "capacity");
	if (json_is_integer(inf) && json_is_integer(cap) && json_integer_value(inf) >= 0 &&
	    json_integer_value(cap) >= 0) {
		ps->in_flight = json_integer_value(inf);
		ps->capacity = json_integer_value(cap);
	} else {
		ps->in_flight = ps->capacity = -1;
	}
	json_t *th = json_object_get(root, "thermal");
	ps->hot = json_is_true(json_object_get(th, "hot"));
	/* Absent in answers of nodes that do not serve inference at all. */
	json_t *acc = json_object_get(root, "accepting");
	ps->accepting = json_is_boolean(acc) ? json_is_true(acc) : 0;
	json_t *fl = json_object_get(root, "federated_learning");
	ps->fl_enabled = json_is_boolean(fl) ? json_is_true(fl) : -1;
	json_t *temp = json_object_get(th, "temp_c");
	ps->has_temp = json_is_number(temp) && isfinite(json_number_value(temp)) &&
	               fabs(json_number_value(temp)) < 1000;
	ps->temp_c = ps->has_temp ? json_number_value(temp) : 0;
	json_decref(root);
	return 0;
}

static void check_succeeded(peer_state *ps)
{
	peer_table *t = ps->t;
	double ms = (double)(uv_hrtime() - ps->started_ns) / 1e6;
	ps->latency_ms = ps->latency_ms < 0 ? ms
	                                    : PEER_TABLE_LATENCY_ALPHA * ms +
	                                          (1 - PEER_TABLE_LATENCY_ALPHA) * ps->latency_ms;
	ps->failures = 0;
	ps->last_seen = wall_now();
	bool moved = strcmp(ps->addr, ps->call_addr) != 0;
	memcpy(ps->addr, ps->call_addr, sizeof(ps->addr));
	if (ps->probe_source) {
		disc_entry *e = find_entry(t, ps->probe_source, ps->probe_id, NULL);
		if (e && !e->fp[0])
			memcpy(e->learned, ps->fp, sizeof(e->learned));
	}
	const trusted_peer *p = trust_store_find(t->ts, ps->fp);
	if (p && (p->n_addresses == 0 || strcmp(p->addresses[0], ps->addr) != 0)) {
		sovmesh_error err = {0};
		if (trust_store_note_address(t->ts, ps->fp, ps->addr, &err) < 0)
			log_warning("peer %.16s...: cannot record address %s: %s", ps->fp, ps->addr,
			            err.message);
	}
	if (ps->status != PEER_CONNECTED || moved)
		log_info("peer %s (%.16s...) is connected at %s", display_name(t, ps, NULL), ps->fp,
		         ps->addr);
	ps->status = PEER_CONNECTED;
}

static void on_health_status(void *ud, long status)
{
	peer_state *ps = ud;
	ps->http_status = status;
}

static int on_health_body(void *ud, const char *data, size_t len)
{
	peer_state *ps = ud;
	if (ps->body_len + len > PEER_TABLE_MAX_HEALTH_BODY) {
		ps->too_big = true;
		return 1;
	}
	char *n = realloc(ps->body, ps->body_len + len + 1);
	if (!n)
		return 1;
	memcpy(n + ps->body_len, data, len);
	ps->body = n;
	ps->body_len += len;
	ps->body[ps->body_len] = '\0';
	return 0;
}

static void on_health_done(void *ud, int result, long http_status, const char *message)
{
	peer_state *ps = ud;
	char why[600];
	if (result == 0 && http_status != 200) {
		snprintf(why, sizeof(why), "answered HTTP %ld to %s", http_status,
		         PEER_HEALTH_PATH);
		result = -EPROTO;
		message = why;
	} else if (result == 0 && apply_health(ps, ps->body ? ps->body : "", ps->body_len) < 0) {
		snprintf(why, sizeof(why), "answered %s with something other than JSON",
		         PEER_HEALTH_PATH);
		result = -EPROTO;
		message = why;
	} else if (result == -ECANCELED && ps->too_big) {
		snprintf(why, sizeof(why), "health answer longer than %d bytes",
		         PEER_TABLE_MAX_HEALTH_BODY);
		message = why;
	}
	if (result == 0)
		check_succeeded(ps);
	else
		check_failed(ps, result, message);
	end_call(ps);
}

static const sovmesh_http_callbacks health_cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = on_health_status,
    .on_body = on_health_body,
    .on_done = on_health_done,
};

static void start_check(peer_table *t, peer_state *ps)
{
	if (ps->call || t->closing)
		return;
	const char *addr = NULL;
	const disc_entry *probe = NULL;
	if (ps->addr[0] && ps->failures < t->fail_threshold) {
		addr = ps->addr;
	} else {
		candidate *c = malloc(MAX_CANDIDATES * sizeof(*c));
		if (!c)
			return;
		size_t n = candidates(t, ps, c);
		if (n) {
			const candidate *pick = &c[ps->cursor % n];
			addr = pick->addr;
			probe = pick->probe;
		}
		if (!addr) {
			free(c);
			set_offline(ps, "no known address");
			return;
		}
		/* addr points into an entry or the trust store, not into c. */
		free(c);
	}
	snprintf(ps->call_addr, sizeof(ps->call_addr), "%s", addr);
	if (probe) {
		ps->probe_source = strdup(probe->source);
		ps->probe_id = strdup(probe->instance_id);
		if (!ps->probe_source || !ps->probe_id) {
			end_call(ps);
			return;
		}
	}
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(ps->call_addr, 0, &hp, &why) < 0) {
		/* Cannot happen for addresses checked on the way in; skip it. */
		ps->cursor++;
		end_call(ps);
		return;
	}
	peer_request req = {
	    .fingerprint_hex = ps->fp,
	    .host = hp.host,
	    .port = hp.port,
	    .method = "GET",
	    .path = PEER_HEALTH_PATH,
	    .timeout_ms = t->timeout_ms,
	};
	sovmesh_error err = {0};
	ps->started_ns = uv_hrtime();
	ps->call = peer_client_request(t->pc, &req, &health_cbs, ps, &err);
	if (!ps->call) {
		check_failed(ps, err.code ? err.code : -EIO, err.message);
		end_call(ps);
	}
}

static void check_all(peer_table *t)
{
	sync_states(t);
	for (size_t i = 0; i < t->n_ps; i++)
		start_check(t, t->ps[i]);
}

static void on_tick(uv_timer_t *h)
{
	check_all(h->data);
}

static void kick(peer_table *t)
{
	if (!t->closing)
		uv_timer_start(&t->kick, on_tick, 0, 0);
}

/* ---- discovery events ---- */

/* The address of a report as "host:port", checked; -EINVAL if unusable. */
static int event_address(const sovmesh_discovered_peer *p, char host[HOSTPORT_HOST_MAX],
                         char addr[HOSTPORT_TEXT_MAX])
{
	if (!p->address || p->port == 0 || strlen(p->address) >= HOSTPORT_HOST_MAX)
		return -EINVAL;
	hostport hp = {.port = p->port};
	char bare[HOSTPORT_HOST_MAX];
	snprintf(bare, sizeof(bare), "%s", p->address);
	char *zone = strchr(bare, '%');
	if (zone)
		*zone = '\0';
	struct in_addr a4;
	struct in6_addr a6;
	if (!zone && inet_pton(AF_INET, bare, &a4) == 1) {
		hp.family = AF_INET;
		snprintf(hp.host, sizeof(hp.host), "%s", bare);
	} else if (inet_pton(AF_INET6, bare, &a6) == 1) {
		hp.family = AF_INET6;
		char ifname[IF_NAMESIZE];
		if (zone)
			snprintf(hp.host, sizeof(hp.host), "%s", p->address);
		else if (IN6_IS_ADDR_LINKLOCAL(&a6) && p->ifindex &&
		         if_indextoname(p->ifindex, ifname) &&
		         strlen(bare) + 1 + strlen(ifname) < sizeof(hp.host)) {
			memcpy(hp.host, bare, strlen(bare));
			hp.host[strlen(bare)] = '%';
			memcpy(hp.host + strlen(bare) + 1, ifname, strlen(ifname) + 1);
		} else {
			snprintf(hp.host, sizeof(hp.host), "%s", bare);
		}
	} else {
		return -EINVAL;
	}
	hostport_format(&hp, addr, HOSTPORT_TEXT_MAX);
	hostport check;
	const char *why;
	if (hostport_parse(addr, 0, &check, &why) < 0)
		return -EINVAL;
	snprintf(host, HOSTPORT_HOST_MAX, "%s", check.host);
	return 0;
}

static bool fp_seen_elsewhere(const peer_table *t, const char *fp)
{
	for (size_t i = 0; i < t->n_disc; i++)
		if (strcmp(entry_fp(t->disc[i]), fp) == 0)
			return true;
	return false;
}

static void on_gone(peer_table *t, const char *source, const char *id)
{
	size_t at;
	disc_entry *e = find_entry(t, source, id, &at);
	if (!e)
		return;
	fp_hex fp;
	memcpy(fp, entry_fp(e), sizeof(fp));
	remove_entry_at(t, at);
	if (!fp[0] || fp_seen_elsewhere(t, fp))
		return;
	peer_state *ps = find_state(t, fp, NULL);
	if (!ps)
		return;
	/* A goodbye: offline now, without waiting for checks to fail.  The
	 * next check starts over from the best known address. */
	cancel_call(ps);
	set_offline(ps, "it left the network");
	ps->failures = t->fail_threshold;
	ps->addr[0] = '\0';
	ps->cursor = 0;
}

/* See peer_table.h.  `peer` and its strings borrowed. */
void peer_table_discovery_event(void *table, const char *source, sovmesh_peer_event event,
                                const sovmesh_discovered_peer *peer)
{
	peer_table *t = table;
	if (!t || t->closing || !source || !peer || !peer->instance_id || !peer->instance_id[0] ||
	    strlen(peer->instance_id) > MAX_INSTANCE_ID)
		return;
	if (event == SOVMESH_PEER_GONE) {
		on_gone(t, source, peer->instance_id);
		return;
	}
	if (event != SOVMESH_PEER_APPEARED && event != SOVMESH_PEER_CHANGED)
		return;
	char host[HOSTPORT_HOST_MAX], addr[HOSTPORT_TEXT_MAX];
	if (event_address(peer, host, addr) < 0) {
		log_debug("%s: dropped a report with an unusable address", source);
		return;
	}
	fp_hex fp = "";
	if (peer->fingerprint && normalise_fp(peer->fingerprint, fp) < 0) {
		log_debug("%s: ignored a malformed fingerprint", source);
		fp[0] = '\0';
	}
	const char *name = peer->node_name;
	if (name && trust_store_check_name(name, NULL) < 0)
		name = NULL;

	disc_entry *e = find_entry(t, source, peer->instance_id, NULL);
	bool is_new = !e;
	if (is_new) {
		if (t->n_disc >= MAX_DISCOVERED) {
			if (!t->warned_full)
				log_warning("%s: more than %d devices discovered; ignoring the "
				            "rest",
				            source, MAX_DISCOVERED);
			t->warned_full = true;
			return;
		}
		if (t->n_disc == t->cap_disc) {
			size_t cap = t->cap_disc ? t->cap_disc * 2 : 16;
			disc_entry **n = realloc(t->disc, cap * sizeof(*n));
			if (!n)
				return;
			t->disc = n;
			t->cap_disc = cap;
		}
		e = calloc(1, sizeof(*e));
		if (!e)
			return;
		e->source = strdup(source);
		e->instance_id = strdup(peer->instance_id);
		if (!e->source || !e->instance_id) {
			entry_free(e);
			return;
		}
		t->disc[t->n_disc++] = e;
	}
	fp_hex old_fp;
	memcpy(old_fp, entry_fp(e), sizeof(old_fp));
	bool addr_changed = strcmp(e->addr, addr) != 0;
	if (addr_changed) {
		/* Whatever a check learned about the old address is void. */
		e->learned[0] = '\0';
		free(e->refused);
		e->refused = NULL;
		e->n_refused = 0;
	}
	memcpy(e->addr, addr, sizeof(e->addr));
	memcpy(e->host, host, sizeof(e->host));
	memcpy(e->fp, fp, sizeof(e->fp));
	char *dup = name ? strdup(name) : NULL;
	free(e->name);
	e->name = dup;
	e->pairing_port = peer->size >= offsetof(sovmesh_discovered_peer, pairing_port) +
	                                    sizeof(peer->pairing_port)
	                      ? peer->pairing_port
	                      : 0;
	e->seq = ++t->seq;

	/* A paired peer announced at a new address: look there now instead
	 * of waiting for the old address to fail twice. */
	const char *now_fp = entry_fp(e);
	if (now_fp[0] && (addr_changed || strcmp(old_fp, now_fp) != 0)) {
		peer_state *ps = find_state(t, now_fp, NULL);
		if (!ps && trust_store_find(t->ts, now_fp) && strcmp(now_fp, t->self) != 0)
			ps = ensure_state(t, now_fp);
		if (ps && strcmp(ps->addr, e->addr) != 0) {
			if (ps->call && strcmp(ps->call_addr, e->addr) != 0)
				cancel_call(ps);
			/* Empty: the next check picks the newest announcement. */
			ps->addr[0] = '\0';
			ps->cursor = 0;
			kick(t);
		}
	} else if (is_new && !now_fp[0]) {
		kick(t); /* an unknown device: offline peers may be there */
	}
}

void peer_table_forget_source(peer_table *t, const char *source)
{
	if (!t || !source)
		return;
	for (size_t i = 0; i < t->n_disc;) {
		if (strcmp(t->disc[i]->source, source) == 0)
			remove_entry_at(t, i);
		else
			i++;
	}
}

/* ---- trust changes ---- */

/* See peer_table.h.  `peer` borrowed. */
void peer_table_trust_changed(void *ud, const trusted_peer *peer, int removed)
{
	peer_table *t = ud;
	if (!t || !peer || t->closing)
		return;
	size_t at;
	peer_state *ps = find_state(t, peer->fingerprint_hex, &at);
	if (removed) {
		if (ps) {
			state_free(ps);
			memmove(&t->ps[at], &t->ps[at + 1], (t->n_ps - at - 1) * sizeof(*t->ps));
			t->n_ps--;
		}
		return;
	}
	if (strcmp(peer->fingerprint_hex, t->self) != 0 && ensure_state(t, peer->fingerprint_hex))
		kick(t);
}

void peer_table_check_now(peer_table *t)
{
	if (t)
		kick(t);
}

/* ---- views ---- */

size_t peer_table_paired_count(const peer_table *t)
{
	size_t n = 0, total = trust_store_count(t->ts);
	for (size_t i = 0; i < total; i++)
		n += strcmp(trust_store_at(t->ts, i)->fingerprint_hex, t->self) != 0;
	return n;
}

static void fill_info(const peer_table *t, const trusted_peer *p, peer_info *out)
{
	const peer_state *ps = find_state(t, p->fingerprint_hex, NULL);
	memset(out, 0, sizeof(*out));
	out->fingerprint_hex = p->fingerprint_hex;
	out->name = display_name(t, ps, p);
	out->address = ps && ps->addr[0] ? ps->addr : p->n_addresses ? p->addresses[0] : "";
	out->status = ps ? ps->status : PEER_OFFLINE;
	out->latency_ms = ps ? ps->latency_ms : -1;
	out->models = ps ? (const char *const *)ps->models : NULL;
	out->n_models = ps ? ps->n_models : 0;
	out->in_flight = ps ? ps->in_flight : -1;
	out->capacity = ps ? ps->capacity : -1;
	out->hot = ps ? ps->hot : 0;
	out->accepting = ps ? ps->accepting : 0;
	out->fl_enabled = ps ? ps->fl_enabled : -1;
	out->has_temp = ps ? ps->has_temp : 0;
	out->temp_c = ps ? ps->temp_c : 0;
	out->last_seen = ps ? ps->last_seen : 0;
	out->last_sync = p->last_sync;
}

int peer_table_paired_at(const peer_table *t, size_t i, peer_info *out)
{
	size_t total = trust_store_count(t->ts);
	for (size_t k = 0; k < total; k++) {
		const trusted_peer *p = trust_store_at(t->ts, k);
		if (strcmp(p->fingerprint_hex, t->self) == 0)
			continue;
		if (i-- == 0) {
			fill_info(t, p, out);
			return 0;
		}
	}
	return -ENOENT;
}

int peer_table_lookup(const peer_table *t, const char *fingerprint_hex, peer_info *out)
{
	fp_hex fp;
	if (normalise_fp(fingerprint_hex, fp) < 0)
		return -ENOENT;
	const trusted_peer *p = trust_store_find(t->ts, fp);
	if (!p || strcmp(fp, t->self) == 0)
		return -ENOENT;
	fill_info(t, p, out);
	return 0;
}

static bool entry_unpaired(const peer_table *t, const disc_entry *e)
{
	const char *fp = entry_fp(e);
	return strcmp(fp, t->self) != 0 && !(fp[0] && trust_store_find(t->ts, fp));
}

size_t peer_table_discovered_count(const peer_table *t)
{
	size_t n = 0;
	for (size_t i = 0; i < t->n_disc; i++)
		n += strcmp(entry_fp(t->disc[i]), t->self) != 0;
	return n;
}

static json_t *str_or_null(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

static json_t *paired_json(const peer_info *pi)
{
	char short_fp[IDENTITY_SHORT_FP_LEN + 1] = "";
	uint8_t raw[IDENTITY_FP_LEN];
	if (identity_fp_from_hex(pi->fingerprint_hex, raw) == 0)
		identity_fp_short(raw, short_fp);
	json_t *models = json_array();
	for (size_t i = 0; models && i < pi->n_models; i++)
		json_array_append_new(models, json_string(pi->models[i]));
	json_t *load = pi->capacity >= 0
	                   ? json_pack("{s:I,s:I}", "in_flight", (json_int_t)pi->in_flight,
	                               "capacity", (json_int_t)pi->capacity)
	                   : json_null();
	json_t *thermal = pi->last_seen
	                      ? json_pack("{s:b,s:o}", "hot", pi->hot, "temp_c",
	                                  pi->has_temp ? json_real(pi->temp_c) : json_null())
	                      : json_null();
	return json_pack(
	    "{s:s,s:s,s:s,s:o,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:o}", "name", pi->name, "fingerprint",
	    pi->fingerprint_hex, "short_fingerprint", short_fp, "address", str_or_null(pi->address),
	    "status", pi->status == PEER_CONNECTED ? "connected" : "offline", "latency_ms",
	    pi->latency_ms >= 0 ? json_real(round(pi->latency_ms * 10) / 10) : json_null(),
	    "models", models ? models : json_array(), "load", load, "thermal", thermal, "last_seen",
	    pi->last_seen ? json_integer(pi->last_seen) : json_null(), "last_sync",
	    pi->last_sync ? json_integer(pi->last_sync) : json_null(), "accepting", pi->accepting,
	    "federated_learning", pi->fl_enabled < 0 ? json_null() : json_boolean(pi->fl_enabled));
}

static void pairing_address(const disc_entry *e, char out[HOSTPORT_TEXT_MAX])
{
	hostport hp = {.port = e->pairing_port,
	               .family = strchr(e->host, ':') ? AF_INET6 : AF_INET};
	snprintf(hp.host, sizeof(hp.host), "%s", e->host);
	hostport_format(&hp, out, HOSTPORT_TEXT_MAX);
}

json_t *peer_table_json(const peer_table *t)
{
	json_t *root = json_object(), *paired = json_array(), *disc = json_array();
	if (!root || !paired || !disc) {
		json_decref(root);
		json_decref(paired);
		json_decref(disc);
		return NULL;
	}
	json_object_set_new(root, "paired", paired);
	json_object_set_new(root, "discovered", disc);
	size_t n = peer_table_paired_count(t);
	for (size_t i = 0; i < n; i++) {
		peer_info pi;
		if (peer_table_paired_at(t, i, &pi) == 0)
			json_array_append_new(paired, paired_json(&pi));
	}
	for (size_t i = 0; i < t->n_disc; i++) {
		const disc_entry *e = t->disc[i];
		if (!entry_unpaired(t, e))
			continue;
		char pa[HOSTPORT_TEXT_MAX] = "";
		if (e->pairing_port)
			pairing_address(e, pa);
		json_array_append_new(
		    disc, json_pack("{s:o,s:o,s:s,s:s,s:b,s:o}", "name", str_or_null(e->name),
		                    "fingerprint", str_or_null(entry_fp(e)), "address", e->addr,
		                    "source", e->source, "pairing_open", e->pairing_port != 0,
		                    "pairing_address", str_or_null(pa)));
	}
	return root;
}

size_t peer_table_pairing_candidates(const peer_table *t, char (*out)[HOSTPORT_TEXT_MAX],
                                     size_t max)
{
	size_t n = 0;
	uint64_t below = UINT64_MAX;
	/* newest first: repeatedly take the highest seq below the last one */
	while (n < max) {
		const disc_entry *best = NULL;
		for (size_t i = 0; i < t->n_disc; i++) {
			const disc_entry *e = t->disc[i];
			if (e->pairing_port && e->seq < below && entry_unpaired(t, e) &&
			    (!best || e->seq > best->seq))
				best = e;
		}
		if (!best)
			break;
		below = best->seq;
		char pa[HOSTPORT_TEXT_MAX];
		pairing_address(best, pa);
		bool dup = false;
		for (size_t k = 0; k < n; k++)
			dup |= strcmp(out[k], pa) == 0;
		if (!dup)
			memcpy(out[n++], pa, HOSTPORT_TEXT_MAX);
	}
	return n;
}

/* ---- life cycle ---- */

/* See peer_table.h.  loop, ts, pc borrowed; self_fp copied. */
int peer_table_new(uv_loop_t *loop, trust_store *ts, peer_client *pc, const char *self_fp,
                   const peer_table_options *opts, peer_table **out)
{
	if (!loop || !ts || !pc || !out)
		return -EINVAL;
	peer_table *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	if (self_fp && normalise_fp(self_fp, t->self) < 0) {
		free(t);
		return -EINVAL;
	}
	t->loop = loop;
	t->ts = ts;
	t->pc = pc;
	t->interval_ms = opts && opts->interval_ms ? opts->interval_ms : PEER_TABLE_INTERVAL_MS;
	t->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : t->interval_ms;
	t->fail_threshold =
	    opts && opts->fail_threshold ? opts->fail_threshold : PEER_TABLE_FAIL_THRESHOLD;
	uv_timer_init(loop, &t->tick);
	uv_timer_init(loop, &t->kick);
	t->tick.data = t->kick.data = t;
	t->open_handles = 2;
	uv_timer_start(&t->tick, on_tick, 0, t->interval_ms);
	*out = t;
	return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
	peer_table *t = h->data;
	if (--t->open_handles > 0)
		return;
	void (*closed)(void *) = t->closed;
	void *ud = t->closed_ud;
	free(t);
	if (closed)
		closed(ud);
}

void peer_table_free(peer_table *t, void (*closed)(void *ud), void *ud)
{
	if (!t)
		return;
	t->closing = 1;
	t->closed = closed;
	t->closed_ud = ud;
	for (size_t i = 0; i < t->n_ps; i++)
		state_free(t->ps[i]);
	free(t->ps);
	t->ps = NULL;
	t->n_ps = 0;
	for (size_t i = 0; i < t->n_disc; i++)
		entry_free(t->disc[i]);
	free(t->disc);
	t->disc = NULL;
	t->n_disc = 0;
	uv_close((uv_handle_t *)&t->tick, on_handle_closed);
	uv_close((uv_handle_t *)&t->kick, on_handle_closed);
}
