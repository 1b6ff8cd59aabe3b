/*
 * The trust store (see trust_store.h): the only list of peers this node
 * talks to.  Parsing is strict and a bad file is refused, never emptied:
 * silently losing the pins would be a security failure that looks like an
 * ordinary "no peers yet".  Names and addresses arrive from the network
 * when pairing, so add() validates them as untrusted input.
 */
#include "trust_store.h"

#include "state_file.h"
#include "hostport.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <nettle/base64.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define PEERS_FILE    "peers.json"
#define PEERS_VERSION 1
/* Thousands of peers fit in a few MiB; more is not a trust store. */
#define PEERS_FILE_MAX (16u * 1024u * 1024u)
#define NAME_MAX_BYTES 63
#define ADDR_MAX_BYTES 255
#define ADDRS_KEPT     4
#define PREFIX_MIN     8
#define X25519_B64_LEN BASE64_ENCODE_RAW_LENGTH(32)

struct trust_store {
	char *path;
	trusted_peer *peers; /* owned, in pairing order */
	size_t n, cap;
	trust_change_fn on_change;
	void *ud;
};

static int ts_fail(sovmesh_error *err, int code, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int ts_fail(sovmesh_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	err->code = code;
	log_one_line(err->message);
	return code;
}

static void peer_clear(trusted_peer *p)
{
	free(p->name);
	for (size_t i = 0; i < p->n_addresses; i++)
		free(p->addresses[i]);
	free(p->addresses);
	memset(p, 0, sizeof(*p));
}

/* ---- validation of untrusted fields ---- */

/* Decode one UTF-8 sequence at s (NUL-terminated); returns its length and
 * the code point, or 0 if it is malformed, overlong or a surrogate. */
static size_t utf8_next(const unsigned char *s, uint32_t *cp)
{
	uint32_t c = s[0];
	size_t len;
	uint32_t min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xE0) == 0xC0) {
		len = 2, min = 0x80, c &= 0x1F;
	} else if ((c & 0xF0) == 0xE0) {
		len = 3, min = 0x800, c &= 0x0F;
	} else if ((c & 0xF8) == 0xF0) {
		len = 4, min = 0x10000, c &= 0x07;
	} else {
		return 0;
	}
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return len;
}

/* Characters that would let a name forge terminal output or disguise
 * itself: C0/C1 controls, DEL, line separators, bidi overrides. */
static int is_control(uint32_t c)
{
	return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x2028 || c == 0x2029 ||
	       (c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069) || c == 0x200E ||
	       c == 0x200F || c == 0x061C;
}

static const char *name_problem(const char *name)
{
	if (!name)
		return "missing";
	size_t n = strlen(name);
	if (n == 0)
		return "empty";
	if (n > NAME_MAX_BYTES)
		return "longer than 63 bytes";
	for (const unsigned char *s = (const unsigned char *)name; *s;) {
		uint32_t c;
		size_t len = utf8_next(s, &c);
		if (len == 0)
			return "not valid UTF-8";
		if (is_control(c))
			return "contains a control character";
		s += len;
	}
	return NULL;
}

/* See trust_store.h.  `name` borrowed; 0 or -EINVAL with a message. */
int trust_store_check_name(const char *name, sovmesh_error *err)
{
	const char *why = name_problem(name);
	if (why)
		return ts_fail(err, -EINVAL, "peer name: %s", why);
	return 0;
}

/* "host:port" as hostport.h accepts it (numeric addresses only). */
static const char *addr_problem(const char *a)
{
	if (!a)
		return "missing";
	if (strlen(a) > ADDR_MAX_BYTES)
		return "longer than 255 bytes";
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(a, 0, &hp, &why) < 0)
		return why ? why : "not host:port";
	return NULL;
}

/* Lowercase hex of a valid fingerprint into out, or -EINVAL. */
static int normalise_fp(const char *hex, char out[IDENTITY_FP_HEX_LEN + 1])
{
	uint8_t fp[IDENTITY_FP_LEN];
	if (identity_fp_from_hex(hex, fp) < 0)
		return -EINVAL;
	identity_fp_to_hex(fp, out);
	return 0;
}

static void b64_encode32(const uint8_t in[32], char out[X25519_B64_LEN + 1])
{
	base64_encode_raw(out, 32, in);
	out[X25519_B64_LEN] = '\0';
}

/* Exactly the canonical padded base64 of 32 bytes. */
static int b64_decode32(const char *s, uint8_t out[32])
{
	if (strlen(s) != X25519_B64_LEN)
		return -EINVAL;
	struct base64_decode_ctx ctx;
	uint8_t buf[BASE64_DECODE_LENGTH(X25519_B64_LEN)];
	size_t got = sizeof(buf);
	base64_decode_init(&ctx);
	if (!base64_decode_update(&ctx, &got, buf, X25519_B64_LEN, s) ||
	    !base64_decode_final(&ctx) || got != 32)
		return -EINVAL;
	char again[X25519_B64_LEN + 1];
	b64_encode32(buf, again);
	if (strcmp(again, s) != 0)
		return -EINVAL;
	memcpy(out, buf, 32);
	return 0;
}

/* ---- copying ---- */

static int peer_copy(trusted_peer *dst, const trusted_peer *src)
{
	memset(dst, 0, sizeof(*dst));
	memcpy(dst->fingerprint_hex, src->fingerprint_hex, sizeof(dst->fingerprint_hex));
	memcpy(dst->x25519_public, src->x25519_public, 32);
	dst->paired_at = src->paired_at;
	dst->last_sync = src->last_sync;
	dst->name = strdup(src->name);
	size_t n = src->n_addresses < ADDRS_KEPT ? src->n_addresses : ADDRS_KEPT;
	dst->addresses = calloc(n ? n : 1, sizeof(char *));
	if (!dst->name || !dst->addresses)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		dst->addresses[i] = strdup(src->addresses[i]);
		if (!dst->addresses[i])
			goto oom;
		dst->n_addresses++;
	}
	return 0;
oom:
	peer_clear(dst);
	return -ENOMEM;
}

static int grow(trust_store *ts)
{
	if (ts->n < ts->cap)
		return 0;
	size_t cap = ts->cap ? ts->cap * 2 : 8;
	trusted_peer *p = realloc(ts->peers, cap * sizeof(*p));
	if (!p)
		return -ENOMEM;
	ts->peers = p;
	ts->cap = cap;
	return 0;
}

static ssize_t index_of(const trust_store *ts, const char *fp_lower)
{
	for (size_t i = 0; i < ts->n; i++)
		if (strcmp(ts->peers[i].fingerprint_hex, fp_lower) == 0)
			return (ssize_t)i;
	return -1;
}

/* ---- the file ---- */

static json_t *peer_to_json(const trusted_peer *p)
{
	char b64[X25519_B64_LEN + 1];
	b64_encode32(p->x25519_public, b64);
	json_t *addrs = json_array();
	for (size_t i = 0; addrs && i < p->n_addresses; i++) {
		if (json_array_append_new(addrs, json_string(p->addresses[i])) < 0) {
			json_decref(addrs);
			return NULL;
		}
	}
	if (!addrs)
		return NULL;
	return json_pack("{s:s, s:s, s:s, s:o, s:I, s:I}", "fingerprint", p->fingerprint_hex,
	                 "name", p->name, "x25519", b64, "addresses", addrs, "paired_at",
	                 (json_int_t)p->paired_at, "last_sync", (json_int_t)p->last_sync);
}

/* Write the store as it would be with peers[skip] left out (skip may be
 * (size_t)-1); the in-memory store changes only after this succeeds. */
static int persist(const trust_store *ts, size_t skip, sovmesh_error *err)
{
	json_t *arr = json_array();
	json_t *root = arr ? json_pack("{s:i, s:o}", "version", PEERS_VERSION, "peers", arr) : NULL;
	if (!root)
		return ts_fail(err, -ENOMEM, "%s: out of memory", ts->path);
	for (size_t i = 0; i < ts->n; i++) {
		if (i == skip)
			continue;
		if (json_array_append_new(arr, peer_to_json(&ts->peers[i])) < 0) {
			json_decref(root);
			return ts_fail(err, -ENOMEM, "%s: out of memory", ts->path);
		}
	}
	char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!text)
		return ts_fail(err, -ENOMEM, "%s: out of memory", ts->path);
	struct iovec iov[2] = {{text, strlen(text)}, {"\n", 1}};
	int r = state_file_write(ts->path, iov, 2, err);
	free(text);
	return r;
}

static int check_keys(const json_t *obj, const char *const *allowed, const char **bad)
{
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)obj, key, v)
	{
		size_t i = 0;
		while (allowed[i] && strcmp(allowed[i], key) != 0)
			i++;
		if (!allowed[i]) {
			*bad = key;
			return -1;
		}
	}
	return 0;
}

/* One peers[i] entry into *p (zeroed by the caller).  The reason for a
 * refusal goes to *why, naming the field. */
static int peer_from_json(json_t *o, trusted_peer *p, char *why, size_t why_len)
{
	static const char *const keys[] = {"fingerprint", "name",      "x25519", "addresses",
	                                   "paired_at",   "last_sync", NULL};
	const char *bad, *s;
	if (!json_is_object(o))
		return snprintf(why, why_len, "not an object"), -EINVAL;
	if (check_keys(o, keys, &bad) < 0)
		return snprintf(why, why_len, "unknown field '%.40s'", bad), -EINVAL;
	json_t *fp = json_object_get(o, "fingerprint"), *name = json_object_get(o, "name"),
	       *x = json_object_get(o, "x25519"), *addrs = json_object_get(o, "addresses"),
	       *pa = json_object_get(o, "paired_at"), *ls = json_object_get(o, "last_sync");
	if (!json_is_string(fp) || normalise_fp(json_string_value(fp), p->fingerprint_hex) < 0)
		return snprintf(why, why_len, "fingerprint: not 64 hex digits"), -EINVAL;
	if (!json_is_string(name))
		return snprintf(why, why_len, "name: not a string"), -EINVAL;
	s = json_string_value(name);
	if (strlen(s) != json_string_length(name) || name_problem(s))
		return snprintf(why, why_len, "name: %s",
		                name_problem(s) ? name_problem(s) : "contains a NUL byte"),
		       -EINVAL;
	if (!json_is_string(x) || b64_decode32(json_string_value(x), p->x25519_public) < 0)
		return snprintf(why, why_len, "x25519: not base64 of 32 bytes"), -EINVAL;
	if (!json_is_integer(pa) || json_integer_value(pa) < 0)
		return snprintf(why, why_len, "paired_at: not a non-negative integer"), -EINVAL;
	if (!json_is_integer(ls) || json_integer_value(ls) < 0)
		return snprintf(why, why_len, "last_sync: not a non-negative integer"), -EINVAL;
	p->paired_at = json_integer_value(pa);
	p->last_sync = json_integer_value(ls);
	if (!json_is_array(addrs) || json_array_size(addrs) > ADDRS_KEPT)
		return snprintf(why, why_len, "addresses: not an array of at most %d", ADDRS_KEPT),
		       -EINVAL;
	p->name = strdup(s);
	p->addresses = calloc(json_array_size(addrs) + 1, sizeof(char *));
	if (!p->name || !p->addresses)
		return snprintf(why, why_len, "out of memory"), -ENOMEM;
	for (size_t i = 0; i < json_array_size(addrs); i++) {
		json_t *a = json_array_get(addrs, i);
		const char *problem =
		    json_is_string(a) ? addr_problem(json_string_value(a)) : "not a string";
		if (problem)
			return snprintf(why, why_len, "addresses[%zu]: %s", i, problem), -EINVAL;
		p->addresses[i] = strdup(json_string_value(a));
		if (!p->addresses[i])
			return snprintf(why, why_len, "out of memory"), -ENOMEM;
		p->n_addresses++;
	}
	return 0;
}

static int load(trust_store *ts, sovmesh_error *err)
{
	/* O_NONBLOCK: a FIFO planted here must not hang the start. */
	int fd = open(ts->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return ts_fail(err, -errno, "%s: cannot open: %s", ts->path, strerror(errno));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return ts_fail(err, -e, "%s: cannot stat: %s", ts->path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return ts_fail(err, -EINVAL, "%s: not a regular file", ts->path);
	}
	/* Whoever can write this file decides whom we trust. */
	if ((st.st_mode & 0022) != 0) {
		close(fd);
		return ts_fail(err, -EPERM,
		               "%s: mode %03o lets group/other add peers; refusing to trust it; "
		               "check its contents, then chmod 600 it",
		               ts->path, (unsigned)(st.st_mode & 0777));
	}
	if ((uint64_t)st.st_size > PEERS_FILE_MAX) {
		close(fd);
		return ts_fail(err, -EFBIG, "%s: %lld bytes, over the %u-byte limit", ts->path,
		               (long long)st.st_size, PEERS_FILE_MAX);
	}
	json_error_t jerr;
	json_t *root = json_loadfd(fd, JSON_REJECT_DUPLICATES, &jerr);
	close(fd);
	if (!root)
		return ts_fail(err, -EINVAL, "%s: line %d column %d: %s", ts->path, jerr.line,
		               jerr.column, jerr.text);
	static const char *const keys[] = {"version", "peers", NULL};
	json_t *ver = json_object_get(root, "version"), *peers = json_object_get(root, "peers");
	const char *bad;
	int r = 0;
	if (!json_is_object(root)) {
		r = ts_fail(err, -EINVAL, "%s: not a JSON object", ts->path);
	} else if (check_keys(root, keys, &bad) < 0) {
		r = ts_fail(err, -EINVAL, "%s: unknown field '%.40s'", ts->path, bad);
	} else if (!json_is_integer(ver) || json_integer_value(ver) != PEERS_VERSION) {
		r = ts_fail(err, -EINVAL, "%s: version is not %d (written by another sovmesh?)",
		            ts->path, PEERS_VERSION);
	} else if (!json_is_array(peers)) {
		r = ts_fail(err, -EINVAL, "%s: peers: not an array", ts->path);
	}
	for (size_t i = 0; r == 0 && i < json_array_size(peers); i++) {
		char why[160];
		trusted_peer p;
		memset(&p, 0, sizeof(p));
		r = grow(ts);
		if (r == 0)
			r = peer_from_json(json_array_get(peers, i), &p, why, sizeof(why));
		else
			snprintf(why, sizeof(why), "out of memory");
		if (r == 0 && index_of(ts, p.fingerprint_hex) >= 0) {
			snprintf(why, sizeof(why), "fingerprint: listed twice");
			r = -EINVAL;
		}
		if (r < 0) {
			peer_clear(&p);
			r = ts_fail(err, r, "%s: peers[%zu]: %s", ts->path, i, why);
			break;
		}
		ts->peers[ts->n++] = p;
	}
	json_decref(root);
	return r;
}

/* ---- the API ---- */

/* See trust_store.h.  `state_dir` borrowed; *out owned by the caller
 * (trust_store_free).  Not thread-safe: one thread (the loop) uses it. */
int trust_store_open(const char *state_dir, trust_store **out, sovmesh_error *err)
{
	*out = NULL;
	if (!state_dir || !*state_dir)
		return ts_fail(err, -EINVAL, "trust store: no state directory");
	trust_store *ts = calloc(1, sizeof(*ts));
	if (!ts || asprintf(&ts->path, "%s/%s", state_dir, PEERS_FILE) < 0) {
		free(ts);
		return ts_fail(err, -ENOMEM, "trust store: out of memory");
	}
	int r = load(ts, err);
	if (r < 0) {
		trust_store_free(ts);
		return r;
	}
	*out = ts;
	return 0;
}

/* See trust_store.h.  NULL is a no-op. */
void trust_store_free(trust_store *ts)
{
	if (!ts)
		return;
	for (size_t i = 0; i < ts->n; i++)
		peer_clear(&ts->peers[i]);
	free(ts->peers);
	free(ts->path);
	free(ts);
}

/* See trust_store.h.  One callback; a new one replaces it; fn NULL clears. */
void trust_store_on_change(trust_store *ts, trust_change_fn fn, void *ud)
{
	ts->on_change = fn;
	ts->ud = ud;
}

/* See trust_store.h. */
size_t trust_store_count(const trust_store *ts)
{
	return ts->n;
}

/* See trust_store.h.  Borrowed; valid until the next add/remove/note. */
const trusted_peer *trust_store_at(const trust_store *ts, size_t i)
{
	return i < ts->n ? &ts->peers[i] : NULL;
}

/* See trust_store.h.  Borrowed; valid until the next add/remove/note. */
const trusted_peer *trust_store_find(const trust_store *ts, const char *fingerprint_hex)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	if (normalise_fp(fingerprint_hex, fp) < 0)
		return NULL;
	ssize_t i = index_of(ts, fp);
	return i < 0 ? NULL : &ts->peers[i];
}

/* Crockford base32 input, as people type it: case-insensitive, I/L -> 1,
 * O -> 0, dashes and spaces ignored.  16 symbols into out, or -EINVAL. */
static int normalise_short(const char *in, char out[17])
{
	static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	size_t n = 0;
	for (const char *s = in; *s; s++) {
		char c = *s;
		if (c == '-' || c == ' ')
			continue;
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		if (c == 'I' || c == 'L')
			c = '1';
		else if (c == 'O')
			c = '0';
		if (!strchr(alphabet, c) || n == 16)
			return -EINVAL;
		out[n++] = c;
	}
	out[n] = '\0';
	return n == 16 ? 0 : -EINVAL;
}

static int matches(const trusted_peer *p, const char *what, int is_prefix, const char *prefix,
                   int is_short, const char *shortf)
{
	if (strcmp(p->name, what) == 0)
		return 1;
	if (is_prefix && strncmp(p->fingerprint_hex, prefix, strlen(prefix)) == 0)
		return 1;
	if (is_short) {
		uint8_t fp[IDENTITY_FP_LEN];
		char sf[IDENTITY_SHORT_FP_LEN + 1], plain[17];
		size_t n = 0;
		identity_fp_from_hex(p->fingerprint_hex, fp);
		identity_fp_short(fp, sf);
		for (const char *s = sf; *s; s++)
			if (*s != '-')
				plain[n++] = *s;
		plain[n] = '\0';
		if (strcmp(plain, shortf) == 0)
			return 1;
	}
	return 0;
}

/*
 * See trust_store.h.  `what` borrowed; *out borrowed from the store.  A
 * full fingerprint is looked up alone (no name can be 64 bytes); anything
 * else is matched as name, hex prefix and short form at once, so a peer
 * cannot take over another's prefix by choosing it as its name: that is
 * reported as ambiguous.
 */
int trust_store_resolve(const trust_store *ts, const char *what, const trusted_peer **out,
                        sovmesh_error *err)
{
	*out = NULL;
	char shown[68];
	snprintf(shown, sizeof(shown), "%s", what ? what : "");
	log_one_line(shown);
	if (!what || !*what)
		return ts_fail(err, -EINVAL, "no peer given");
	char fp[IDENTITY_FP_HEX_LEN + 1];
	if (normalise_fp(what, fp) == 0) {
		ssize_t i = index_of(ts, fp);
		if (i < 0)
			return ts_fail(err, -ENOENT, "no paired peer has fingerprint %s", fp);
		*out = &ts->peers[i];
		return 0;
	}
	char prefix[IDENTITY_FP_HEX_LEN + 1], shortf[17];
	size_t len = strlen(what);
	int is_prefix = len >= PREFIX_MIN && len < IDENTITY_FP_HEX_LEN;
	for (size_t i = 0; is_prefix && i < len; i++) {
		if (!strchr("0123456789abcdefABCDEF", what[i]))
			is_prefix = 0;
		else
			prefix[i] = (char)(what[i] | 0x20); /* ASCII hex to lowercase */
	}
	if (is_prefix)
		prefix[len] = '\0';
	int is_short = normalise_short(what, shortf) == 0;

	size_t n = 0;
	const trusted_peer *first = NULL;
	char list[400];
	size_t used = 0;
	list[0] = '\0';
	for (size_t i = 0; i < ts->n; i++) {
		const trusted_peer *p = &ts->peers[i];
		if (!matches(p, what, is_prefix, prefix, is_short, shortf))
			continue;
		if (n++ == 0)
			first = p;
		uint8_t raw[IDENTITY_FP_LEN];
		char sf[IDENTITY_SHORT_FP_LEN + 1];
		identity_fp_from_hex(p->fingerprint_hex, raw);
		identity_fp_short(raw, sf);
		if (used < sizeof(list)) {
			int w = snprintf(list + used, sizeof(list) - used, "%s%s (%s)",
			                 n > 1 ? ", " : "", p->name, sf);
			used += w > 0 ? (size_t)w : 0;
		}
	}
	if (n == 0)
		return ts_fail(
		    err, -ENOENT,
		    "no paired peer matches '%s' (give a name, a fingerprint or at least "
		    "%d of its hex digits, or its short form)",
		    shown, PREFIX_MIN);
	if (n > 1)
		return ts_fail(err, -EINVAL,
		               "'%s' matches %zu peers: %s%s; give the full fingerprint", shown, n,
		               list, used >= sizeof(list) ? "..." : "");
	*out = first;
	return 0;
}

static int validate(const trusted_peer *p, char fp[IDENTITY_FP_HEX_LEN + 1], sovmesh_error *err)
{
	if (normalise_fp(p->fingerprint_hex, fp) < 0)
		return ts_fail(err, -EINVAL, "peer fingerprint is not 64 hex digits");
	const char *why = name_problem(p->name);
	if (why)
		return ts_fail(err, -EINVAL, "peer %.16s...: name: %s", fp, why);
	if (p->n_addresses && !p->addresses)
		return ts_fail(err, -EINVAL, "peer %.16s...: addresses missing", fp);
	for (size_t i = 0; i < p->n_addresses; i++) {
		why = addr_problem(p->addresses[i]);
		if (why)
			return ts_fail(err, -EINVAL, "peer %.16s...: address %zu: %s", fp, i, why);
	}
	if (p->paired_at < 0 || p->last_sync < 0)
		return ts_fail(err, -EINVAL, "peer %.16s...: negative time", fp);
	return 0;
}

/* See trust_store.h.  `p` borrowed (copied; at most 4 addresses kept).
 * Calls the change callback after the file is written. */
int trust_store_add(trust_store *ts, const trusted_peer *p, sovmesh_error *err)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	int r = validate(p, fp, err);
	if (r < 0)
		return r;
	trusted_peer copy;
	if (peer_copy(&copy, p) < 0 || grow(ts) < 0) {
		peer_clear(&copy);
		return ts_fail(err, -ENOMEM, "%s: out of memory", ts->path);
	}
	memcpy(copy.fingerprint_hex, fp, sizeof(fp));
	ssize_t at = index_of(ts, fp);
	trusted_peer old;
	size_t i;
	if (at >= 0) {
		i = (size_t)at;
		old = ts->peers[i];
		ts->peers[i] = copy;
	} else {
		i = ts->n++;
		ts->peers[i] = copy;
	}
	r = persist(ts, (size_t)-1, err);
	if (r < 0) {
		peer_clear(&ts->peers[i]);
		if (at >= 0)
			ts->peers[i] = old;
		else
			ts->n--;
		return r;
	}
	if (at >= 0)
		peer_clear(&old);
	if (ts->on_change)
		ts->on_change(ts->ud, &ts->peers[i], 0);
	return 0;
}

/* See trust_store.h.  Calls the change callback after the file is written. */
int trust_store_remove(trust_store *ts, const char *fingerprint_hex, sovmesh_error *err)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	if (normalise_fp(fingerprint_hex, fp) < 0)
		return ts_fail(err, -EINVAL, "peer fingerprint is not 64 hex digits");
	ssize_t at = index_of(ts, fp);
	if (at < 0)
		return ts_fail(err, -ENOENT, "no paired peer has fingerprint %s", fp);
	int r = persist(ts, (size_t)at, err);
	if (r < 0)
		return r;
	trusted_peer gone = ts->peers[at];
	memmove(&ts->peers[at], &ts->peers[at + 1], (ts->n - (size_t)at - 1) * sizeof(*ts->peers));
	ts->n--;
	if (ts->on_change)
		ts->on_change(ts->ud, &gone, 1);
	peer_clear(&gone);
	return 0;
}

/* See trust_store.h.  `hostport` borrowed.  Writes the file only when the
 * list changes; no change callback (the peer is the same). */
int trust_store_note_sync(trust_store *ts, const char *fingerprint_hex, int64_t when,
                          sovmesh_error *err)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	if (normalise_fp(fingerprint_hex, fp) < 0)
		return ts_fail(err, -EINVAL, "peer fingerprint is not 64 hex digits");
	ssize_t at = index_of(ts, fp);
	if (at < 0)
		return ts_fail(err, -ENOENT, "no paired peer has fingerprint %s", fp);
	trusted_peer *p = &ts->peers[at];
	int64_t old = p->last_sync;
	if (when <= old)
		return 0;
	p->last_sync = when;
	int r = persist(ts, (size_t)-1, err);
	if (r < 0)
		p->last_sync = old;
	return r;
}

int trust_store_note_address(trust_store *ts, const char *fingerprint_hex, const char *hostport,
                             sovmesh_error *err)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	if (normalise_fp(fingerprint_hex, fp) < 0)
		return ts_fail(err, -EINVAL, "peer fingerprint is not 64 hex digits");
	ssize_t at = index_of(ts, fp);
	if (at < 0)
		return ts_fail(err, -ENOENT, "no paired peer has fingerprint %s", fp);
	const char *why = addr_problem(hostport);
	if (why)
		return ts_fail(err, -EINVAL, "peer %.16s...: address: %s", fp, why);
	trusted_peer *p = &ts->peers[at];
	if (p->n_addresses > 0 && strcmp(p->addresses[0], hostport) == 0)
		return 0;
	/* The new list: hostport first, then the old ones without it. */
	char **addrs = calloc(ADDRS_KEPT, sizeof(char *));
	char *dup = strdup(hostport);
	if (!addrs || !dup) {
		free(addrs);
		free(dup);
		return ts_fail(err, -ENOMEM, "%s: out of memory", ts->path);
	}
	size_t n = 0;
	addrs[n++] = dup;
	for (size_t i = 0; i < p->n_addresses && n < ADDRS_KEPT; i++)
		if (strcmp(p->addresses[i], hostport) != 0)
			addrs[n++] = p->addresses[i];
	char **old = p->addresses;
	size_t old_n = p->n_addresses;
	p->addresses = addrs;
	p->n_addresses = n;
	int r = persist(ts, (size_t)-1, err);
	if (r < 0) {
		p->addresses = old;
		p->n_addresses = old_n;
		free(dup);
		free(addrs);
		return r;
	}
	/* Free the old strings that did not move into the new list. */
	for (size_t i = 0; i < old_n; i++) {
		int kept = 0;
		for (size_t j = 1; j < n; j++)
			kept |= addrs[j] == old[i];
		if (!kept)
			free(old[i]);
	}
	free(old);
	return 0;
}
