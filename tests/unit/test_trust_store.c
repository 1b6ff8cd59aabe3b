/* trust_store.c: peers added, found, removed and reloaded; what a user
 * may type to name a peer; corrupt files refused and left alone; names
 * and addresses from the network validated; the change callback. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "trust_store.h"

static char tmpdir[256];
static char path[512];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_trust_store.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *peers_path(void)
{
	snprintf(path, sizeof(path), "%s/peers.json", tmpdir);
	return path;
}

static char *slurp(const char *p)
{
	FILE *f = fopen(p, "rb");
	if (!f)
		return NULL;
	char *buf = malloc(1 << 16);
	assert_non_null(buf);
	size_t n = fread(buf, 1, (1 << 16) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

static void spit(const char *p, const char *text)
{
	FILE *f = fopen(p, "wb");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(chmod(p, 0600), 0);
}

/* Names in the state dir other than peers.json (temporary files left). */
static int stray_files(void)
{
	DIR *d = opendir(tmpdir);
	assert_non_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    strcmp(e->d_name, "peers.json"))
			n++;
	closedir(d);
	return n;
}

static trust_store *open_ok(void)
{
	trust_store *ts = NULL;
	sovmesh_error err = {0};
	int r = trust_store_open(tmpdir, &ts, &err);
	if (r != 0)
		fail_msg("trust_store_open: %d %s", r, err.message);
	return ts;
}

/* A peer whose fingerprint is `fp_prefix` padded with the digit `fill`. */
typedef struct peer_buf {
	trusted_peer p;
	char *addrs[5];
	char a0[32], a1[32];
} peer_buf;

static const trusted_peer *mk(peer_buf *b, const char *name, const char *fp_prefix, char fill)
{
	memset(b, 0, sizeof(*b));
	size_t n = strlen(fp_prefix);
	memcpy(b->p.fingerprint_hex, fp_prefix, n);
	memset(b->p.fingerprint_hex + n, fill, IDENTITY_FP_HEX_LEN - n);
	b->p.name = (char *)name;
	for (int i = 0; i < 32; i++)
		b->p.x25519_public[i] = (uint8_t)(i * 7 + (unsigned char)fill);
	snprintf(b->a0, sizeof(b->a0), "192.168.1.%d:47470", (unsigned char)fill % 250);
	snprintf(b->a1, sizeof(b->a1), "[fe80::1]:47470");
	b->addrs[0] = b->a0;
	b->addrs[1] = b->a1;
	b->p.addresses = b->addrs;
	b->p.n_addresses = 2;
	b->p.paired_at = 1700000000;
	b->p.last_sync = 0;
	return &b->p;
}

static void add_ok(trust_store *ts, const trusted_peer *p)
{
	sovmesh_error err = {0};
	int r = trust_store_add(ts, p, &err);
	if (r != 0)
		fail_msg("trust_store_add: %d %s", r, err.message);
}

static void assert_same_peer(const trusted_peer *a, const trusted_peer *b)
{
	assert_string_equal(a->fingerprint_hex, b->fingerprint_hex);
	assert_string_equal(a->name, b->name);
	assert_memory_equal(a->x25519_public, b->x25519_public, 32);
	assert_int_equal(a->n_addresses, b->n_addresses);
	for (size_t i = 0; i < a->n_addresses; i++)
		assert_string_equal(a->addresses[i], b->addresses[i]);
	assert_int_equal(a->paired_at, b->paired_at);
	assert_int_equal(a->last_sync, b->last_sync);
}

static void test_missing_file_is_empty(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	assert_int_equal(trust_store_count(ts), 0);
	assert_null(trust_store_at(ts, 0));
	assert_int_equal(access(peers_path(), F_OK), -1); /* opening writes nothing */
	trust_store_free(ts);
	trust_store_free(NULL);
}

static void test_add_find_reload(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	peer_buf a, b;
	mk(&a, "laptop", "aa", '1');
	mk(&b, "Küche-PC \xf0\x9f\x96\xa5", "BB", '2'); /* upper case is normalised */
	b.p.last_sync = 1700000500;
	add_ok(ts, &a.p);
	add_ok(ts, &b.p);
	assert_int_equal(trust_store_count(ts), 2);
	struct stat st;
	assert_int_equal(stat(peers_path(), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stray_files(), 0);

	const trusted_peer *f = trust_store_find(ts, a.p.fingerprint_hex);
	assert_non_null(f);
	assert_same_peer(f, &a.p);
	assert_ptr_not_equal(f->name, a.p.name); /* a copy */
	f = trust_store_find(ts,
	                     "bb22222222222222222222222222222222222222222222222222222222222222");
	assert_non_null(f);
	assert_string_equal(f->fingerprint_hex,
	                    "bb22222222222222222222222222222222222222222222222222222222222222");
	assert_null(
	    trust_store_find(ts, "cc"
	                         "22222222222222222222222222222222222222222222222222222222222222"));
	assert_null(trust_store_find(ts, "bb22"));
	assert_null(trust_store_find(ts, NULL));

	trust_store *again = open_ok();
	assert_int_equal(trust_store_count(again), 2);
	for (size_t i = 0; i < 2; i++)
		assert_same_peer(trust_store_at(again, i), trust_store_at(ts, i));
	assert_string_equal(trust_store_at(again, 1)->name, "Küche-PC \xf0\x9f\x96\xa5");
	assert_int_equal(trust_store_at(again, 1)->last_sync, 1700000500);
	trust_store_free(again);
	trust_store_free(ts);
}

typedef struct seen {
	int calls;
	int removed;
	char name[64];
	char fp[65];
	size_t count_during;
	trust_store *ts;
} seen;

static void on_change(void *ud, const trusted_peer *p, int removed)
{
	seen *s = ud;
	s->calls++;
	s->removed = removed;
	snprintf(s->name, sizeof(s->name), "%s", p->name);
	snprintf(s->fp, sizeof(s->fp), "%s", p->fingerprint_hex);
	s->count_during = trust_store_count(s->ts);
	/* Fired after the change is on disk. */
	trust_store *disk = NULL;
	assert_int_equal(trust_store_open(tmpdir, &disk, NULL), 0);
	assert_int_equal(trust_store_find(disk, p->fingerprint_hex) != NULL, !removed);
	trust_store_free(disk);
}

static void test_replace_remove_and_callback(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	seen s = {.ts = ts};
	trust_store_on_change(ts, on_change, &s);
	peer_buf a, b;
	add_ok(ts, mk(&a, "one", "01", 'a'));
	assert_int_equal(s.calls, 1);
	assert_int_equal(s.removed, 0);
	assert_string_equal(s.name, "one");
	add_ok(ts, mk(&b, "two", "02", 'a'));

	/* Same fingerprint: replaced in place, not duplicated. */
	a.p.name = "one-renamed";
	add_ok(ts, &a.p);
	assert_int_equal(trust_store_count(ts), 2);
	assert_string_equal(trust_store_at(ts, 0)->name, "one-renamed");
	assert_int_equal(s.calls, 3);

	sovmesh_error err = {0};
	assert_int_equal(trust_store_remove(ts, a.p.fingerprint_hex, &err), 0);
	assert_int_equal(s.calls, 4);
	assert_int_equal(s.removed, 1);
	assert_string_equal(s.name, "one-renamed");
	assert_string_equal(s.fp, a.p.fingerprint_hex);
	assert_int_equal(s.count_during, 1);
	assert_int_equal(trust_store_count(ts), 1);
	assert_null(trust_store_find(ts, a.p.fingerprint_hex));
	assert_string_equal(trust_store_at(ts, 0)->name, "two");

	assert_int_equal(trust_store_remove(ts, a.p.fingerprint_hex, &err), -ENOENT);
	assert_non_null(strstr(err.message, a.p.fingerprint_hex));
	assert_int_equal(trust_store_remove(ts, "nothex", &err), -EINVAL);
	assert_int_equal(s.calls, 4);

	trust_store *again = open_ok();
	assert_int_equal(trust_store_count(again), 1);
	assert_string_equal(trust_store_at(again, 0)->name, "two");
	trust_store_free(again);

	/* Removing the last peer leaves a valid, empty store. */
	assert_int_equal(trust_store_remove(ts, b.p.fingerprint_hex, &err), 0);
	again = open_ok();
	assert_int_equal(trust_store_count(again), 0);
	trust_store_free(again);
	assert_int_equal(stray_files(), 0);
	trust_store_free(ts);
}

static void test_failed_write_changes_nothing(void **state)
{
	(void)state;
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/gone", tmpdir);
	assert_int_equal(mkdir(dir, 0700), 0);
	trust_store *ts = NULL;
	assert_int_equal(trust_store_open(dir, &ts, NULL), 0);
	seen s = {.ts = ts};
	trust_store_on_change(ts, on_change, &s);
	assert_int_equal(rmdir(dir), 0);
	peer_buf a;
	sovmesh_error err = {0};
	assert_true(trust_store_add(ts, mk(&a, "x", "ab", '3'), &err) < 0);
	assert_non_null(strstr(err.message, "gone/peers.json"));
	assert_int_equal(trust_store_count(ts), 0);
	assert_int_equal(s.calls, 0);
	trust_store_free(ts);
}

static int resolve(trust_store *ts, const char *what, const char **name, sovmesh_error *err)
{
	const trusted_peer *p = NULL;
	int r = trust_store_resolve(ts, what, &p, err);
	*name = p ? p->name : NULL;
	return r;
}

static void test_resolve(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	peer_buf a, b, c, d, e;
	add_ok(ts, mk(&a, "laptop", "abcdef0123", '4'));
	add_ok(ts, mk(&b, "desk", "abcdef0199", '5'));
	add_ok(ts, mk(&c, "twin", "1111", '6'));
	add_ok(ts, mk(&d, "twin", "2222", '7'));
	/* A peer that named itself after another's fingerprint prefix. */
	add_ok(ts, mk(&e, "3333aaaa", "4444", '8'));
	peer_buf f;
	add_ok(ts, mk(&f, "victim", "3333aaaa", '9'));

	const char *name;
	sovmesh_error err = {0};
	assert_int_equal(resolve(ts, "laptop", &name, &err), 0);
	assert_string_equal(name, "laptop");
	assert_int_equal(resolve(ts, "LAPTOP", &name, &err), -ENOENT); /* names are exact */

	/* Full fingerprint, either case. */
	char up[65];
	for (int i = 0; i < 64; i++)
		up[i] = (char)(b.p.fingerprint_hex[i] >= 'a' ? b.p.fingerprint_hex[i] - 32
		                                             : b.p.fingerprint_hex[i]);
	up[64] = '\0';
	assert_int_equal(resolve(ts, up, &name, &err), 0);
	assert_string_equal(name, "desk");

	/* Unique prefixes of 8+ hex digits; 7 is too short. */
	assert_int_equal(resolve(ts, "abcdef0123", &name, &err), 0);
	assert_string_equal(name, "laptop");
	assert_int_equal(resolve(ts, "ABCDEF019", &name, &err), 0);
	assert_string_equal(name, "desk");
	assert_int_equal(resolve(ts, "1111666", &name, &err), -ENOENT);
	assert_int_equal(resolve(ts, "11116666", &name, &err), 0);
	assert_string_equal(name, "twin");

	/* Short form with and without dashes, any case. */
	uint8_t raw[32];
	char sf[20], plain[17];
	assert_int_equal(identity_fp_from_hex(a.p.fingerprint_hex, raw), 0);
	identity_fp_short(raw, sf);
	assert_int_equal(resolve(ts, sf, &name, &err), 0);
	assert_string_equal(name, "laptop");
	size_t n = 0;
	for (const char *s = sf; *s; s++)
		if (*s != '-')
			plain[n++] = (char)(*s >= 'A' && *s <= 'Z' ? *s + 32 : *s);
	plain[n] = '\0';
	assert_int_equal(resolve(ts, plain, &name, &err), 0);
	assert_string_equal(name, "laptop");

	/* Ambiguous: a shared prefix, a shared name, a name that is another
	 * peer's prefix.  The message lists the candidates. */
	assert_int_equal(resolve(ts, "abcdef01", &name, &err), -EINVAL);
	assert_null(name);
	assert_non_null(strstr(err.message, "laptop ("));
	assert_non_null(strstr(err.message, "desk ("));
	assert_non_null(strstr(err.message, "2 peers"));
	assert_int_equal(resolve(ts, "twin", &name, &err), -EINVAL);
	assert_non_null(strstr(err.message, "full fingerprint"));
	assert_int_equal(resolve(ts, "3333aaaa", &name, &err), -EINVAL);
	assert_non_null(strstr(err.message, "victim ("));
	/* ...and the full fingerprint always settles it. */
	assert_int_equal(resolve(ts, f.p.fingerprint_hex, &name, &err), 0);
	assert_string_equal(name, "victim");

	/* No match. */
	assert_int_equal(resolve(ts, "nobody", &name, &err), -ENOENT);
	assert_non_null(strstr(err.message, "'nobody'"));
	assert_int_equal(resolve(ts,
	                         "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
	                         &name, &err),
	                 -ENOENT);
	assert_int_equal(resolve(ts, "", &name, &err), -EINVAL);
	assert_int_equal(resolve(ts, "bad\nline", &name, &err), -ENOENT);
	assert_null(strchr(err.message, '\n'));
	trust_store_free(ts);
}

static void test_names_validated(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	static const char *const bad[] = {
	    "",
	    "0123456789012345678901234567890123456789012345678901234567890123", /* 64 */
	    "tab\there",
	    "new\nline",
	    "del\x7f",
	    "c1\xc2\x85",      /* U+0085 NEL */
	    "bad\xff",         /* not UTF-8 */
	    "over\xc0\xaf",    /* overlong '/' */
	    "sur\xed\xa0\x80", /* surrogate */
	    "cut\xe2\x82",     /* truncated sequence */
	    "rlo\xe2\x80\xae", /* U+202E bidi override */
	    "ls\xe2\x80\xa8",  /* U+2028 line separator */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		peer_buf b;
		sovmesh_error err = {0};
		mk(&b, bad[i], "ab", '1');
		assert_int_equal(trust_store_add(ts, &b.p, &err), -EINVAL);
		assert_non_null(strstr(err.message, "name: "));
		assert_null(strchr(err.message, '\n'));
		assert_int_equal(trust_store_check_name(bad[i], NULL), -EINVAL);
	}
	peer_buf b;
	mk(&b, NULL, "ab", '1');
	assert_int_equal(trust_store_add(ts, &b.p, NULL), -EINVAL);
	assert_int_equal(trust_store_count(ts), 0);
	assert_int_equal(access(peers_path(), F_OK), -1);

	static const char *const good[] = {
	    "x",
	    "012345678901234567890123456789012345678901234567890123456789012", /* 63 */
	    "Zoë's Mac \xf0\x9f\x8d\x8e",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		assert_int_equal(trust_store_check_name(good[i], NULL), 0);
		char fp[3] = {'c', (char)('0' + i), 0};
		add_ok(ts, mk(&b, good[i], fp, '1'));
	}
	assert_int_equal(trust_store_count(ts), 3);

	/* Other fields from the network. */
	sovmesh_error err = {0};
	mk(&b, "ok", "ab", '1');
	snprintf(b.a0, sizeof(b.a0), "example.com:80");
	assert_int_equal(trust_store_add(ts, &b.p, &err), -EINVAL);
	assert_non_null(strstr(err.message, "address 0"));
	snprintf(b.a0, sizeof(b.a0), "10.0.0.1:0");
	assert_int_equal(trust_store_add(ts, &b.p, &err), -EINVAL);
	mk(&b, "ok", "zz", '1');
	assert_int_equal(trust_store_add(ts, &b.p, &err), -EINVAL);
	assert_non_null(strstr(err.message, "fingerprint"));
	mk(&b, "ok", "ab", '1');
	b.p.paired_at = -1;
	assert_int_equal(trust_store_add(ts, &b.p, &err), -EINVAL);
	assert_int_equal(trust_store_count(ts), 3);
	trust_store_free(ts);
}

static void test_note_address(void **state)
{
	(void)state;
	trust_store *ts = open_ok();
	peer_buf a;
	add_ok(ts, mk(&a, "a", "ab", '1'));
	const char *fp = a.p.fingerprint_hex;
	sovmesh_error err = {0};
	assert_int_equal(trust_store_note_address(ts, fp, "10.0.0.1:1", &err), 0);
	assert_int_equal(trust_store_note_address(ts, fp, "10.0.0.2:2", &err), 0);
	assert_int_equal(trust_store_note_address(ts, fp, "10.0.0.3:3", &err), 0);
	/* Seen again: moves to the front, no duplicate; at most four. */
	assert_int_equal(trust_store_note_address(ts, fp, "10.0.0.1:1", &err), 0);
	const trusted_peer *p = trust_store_find(ts, fp);
	assert_int_equal(p->n_addresses, 4);
	assert_string_equal(p->addresses[0], "10.0.0.1:1");
	assert_string_equal(p->addresses[1], "10.0.0.3:3");
	assert_string_equal(p->addresses[2], "10.0.0.2:2");
	assert_string_equal(p->addresses[3], a.a0);

	assert_int_equal(trust_store_note_address(ts, fp, "nope", &err), -EINVAL);
	assert_int_equal(trust_store_note_address(ts, "ab", "10.0.0.1:1", &err), -EINVAL);
	char other[65];
	memset(other, 'e', 64);
	other[64] = '\0';
	assert_int_equal(trust_store_note_address(ts, other, "10.0.0.1:1", &err), -ENOENT);

	trust_store *again = open_ok();
	assert_same_peer(trust_store_find(again, fp), p);
	trust_store_free(again);
	assert_int_equal(stray_files(), 0);
	trust_store_free(ts);
}

#define FP1 "1111111111111111111111111111111111111111111111111111111111111111"
#define X1  "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define PEER(fp, name, x, addrs, pa, ls)                                                           \
	"{\"fingerprint\":\"" fp "\",\"name\":" name ",\"x25519\":" x ",\"addresses\":" addrs      \
	",\"paired_at\":" pa ",\"last_sync\":" ls "}"
#define GOOD           PEER(FP1, "\"n\"", "\"" X1 "\"", "[\"10.0.0.1:5\"]", "1", "0")
#define FILE_OF(peers) "{\"version\":1,\"peers\":[" peers "]}"

static void test_hand_written_file_accepted(void **state)
{
	(void)state;
	spit(peers_path(), FILE_OF(GOOD));
	trust_store *ts = open_ok();
	assert_int_equal(trust_store_count(ts), 1);
	const trusted_peer *p = trust_store_at(ts, 0);
	for (int i = 0; i < 32; i++)
		assert_int_equal(p->x25519_public[i], i);
	assert_string_equal(p->addresses[0], "10.0.0.1:5");
	trust_store_free(ts);
}

static void test_corrupt_files_refused_untouched(void **state)
{
	(void)state;
	static const struct {
		const char *text, *reason;
	} cases[] = {
	    {"", "line"},
	    {"{\"version\":1,\"peers\":[", "line"},
	    {"[]", "not a JSON object"},
	    {"{\"version\":2,\"peers\":[]}", "version"},
	    {"{\"version\":\"1\",\"peers\":[]}", "version"},
	    {"{\"peers\":[]}", "version"},
	    {"{\"version\":1}", "peers: not an array"},
	    {"{\"version\":1,\"peers\":{}}", "peers: not an array"},
	    {"{\"version\":1,\"peers\":[],\"extra\":1}", "unknown field 'extra'"},
	    {"{\"version\":1,\"version\":1,\"peers\":[]}", "duplicate"},
	    {FILE_OF("1"), "peers[0]: not an object"},
	    {FILE_OF(PEER("111", "\"n\"", "\"" X1 "\"", "[]", "1", "0")), "peers[0]: fingerprint"},
	    {FILE_OF(PEER("g111111111111111111111111111111111111111111111111111111111111111",
	                  "\"n\"", "\"" X1 "\"", "[]", "1", "0")),
	     "fingerprint"},
	    {FILE_OF(PEER(FP1, "7", "\"" X1 "\"", "[]", "1", "0")), "name: not a string"},
	    {FILE_OF(PEER(FP1, "\"\"", "\"" X1 "\"", "[]", "1", "0")), "name: empty"},
	    {FILE_OF(PEER(FP1, "\"a\\u0007\"", "\"" X1 "\"", "[]", "1", "0")), "control"},
	    {FILE_OF(PEER(FP1, "\"a\\u0000b\"", "\"" X1 "\"", "[]", "1", "0")), "u0000"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"AAEC\"", "[]", "1", "0")), "x25519"},
	    /* Right length, but the last symbol carries bits past the 32 bytes. */
	    {FILE_OF(PEER(FP1, "\"n\"", "\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=\"", "[]",
	                  "1", "0")),
	     "x25519"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "\"10.0.0.1:5\"", "1", "0")), "addresses"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[\"a:1\",\"a:2\",\"a:3\",\"a:4\",\"a:5\"]",
	                  "1", "0")),
	     "addresses"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[\"10.0.0.1\"]", "1", "0")), "addresses[0]"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[5]", "1", "0")), "addresses[0]"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[]", "\"1\"", "0")), "paired_at"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[]", "1.5", "0")), "paired_at"},
	    {FILE_OF(PEER(FP1, "\"n\"", "\"" X1 "\"", "[]", "1", "-3")), "last_sync"},
	    {FILE_OF("{\"fingerprint\":\"" FP1 "\",\"name\":\"n\",\"x25519\":\"" X1
	             "\",\"addresses\":[],\"paired_at\":1}"),
	     "last_sync"},
	    {FILE_OF("{\"fingerprint\":\"" FP1 "\",\"name\":\"n\",\"x25519\":\"" X1
	             "\",\"addresses\":[],\"paired_at\":1,\"last_sync\":0,\"trusted\":true}"),
	     "unknown field 'trusted'"},
	    {FILE_OF(GOOD "," GOOD), "peers[1]: fingerprint: listed twice"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		spit(peers_path(), cases[i].text);
		trust_store *ts = (trust_store *)1;
		sovmesh_error err = {0};
		int r = trust_store_open(tmpdir, &ts, &err);
		if (r != -EINVAL || !strstr(err.message, cases[i].reason) ||
		    strncmp(err.message, peers_path(), strlen(peers_path())) != 0)
			fail_msg("case %zu: r=%d message '%s', expected '%s'", i, r, err.message,
			         cases[i].reason);
		assert_null(ts);
		assert_null(strchr(err.message, '\n'));
		char *after = slurp(peers_path());
		assert_string_equal(after, cases[i].text);
		free(after);
	}
	/* Duplicates that differ only in case are the same peer. */
	char text[2048];
	snprintf(
	    text, sizeof(text), "%s",
	    FILE_OF(PEER(
	        "abababababababababababababababababababababababababababababababab", "\"n\"",
	        "\"" X1 "\"", "[]", "1",
	        "0") "," PEER("ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
	                      "\"m\"", "\"" X1 "\"", "[]", "1", "0")));
	spit(peers_path(), text);
	trust_store *ts = NULL;
	assert_int_equal(trust_store_open(tmpdir, &ts, NULL), -EINVAL);
}

static void test_writable_file_refused(void **state)
{
	(void)state;
	spit(peers_path(), FILE_OF(GOOD));
	assert_int_equal(chmod(peers_path(), 0666), 0);
	trust_store *ts = NULL;
	sovmesh_error err = {0};
	assert_int_equal(trust_store_open(tmpdir, &ts, &err), -EPERM);
	assert_non_null(strstr(err.message, "mode 666"));
	assert_null(ts);
	/* Readable by others is no risk to the pins; writable is. */
	assert_int_equal(chmod(peers_path(), 0644), 0);
	ts = open_ok();
	assert_int_equal(trust_store_count(ts), 1);
	trust_store_free(ts);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmp, teardown_tmp)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_missing_file_is_empty),
	    T(test_add_find_reload),
	    T(test_replace_remove_and_callback),
	    T(test_failed_write_changes_nothing),
	    T(test_resolve),
	    T(test_names_validated),
	    T(test_note_address),
	    T(test_hand_written_file_accepted),
	    T(test_corrupt_files_refused_untouched),
	    T(test_writable_file_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
