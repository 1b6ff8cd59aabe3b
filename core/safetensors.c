/*
 * The safetensors format (https://github.com/huggingface/safetensors),
 * checked as strictly as the reference implementation: every byte of the
 * data section belongs to exactly one tensor, sizes match dtype x shape,
 * nothing trails.  Adapter files come from peers and users, so every check
 * ends in a one-line message rather than a crash (fuzzed by
 * tests/fuzz/fuzz_safetensors.c).
 */
#include "safetensors.h"

#include "state_file.h"

#include "tensor_set.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define METADATA_KEY "__metadata__"

/* One tensor as the header describes it, before the set is built. */
struct entry {
	const char *name; /* borrowed from the parsed JSON */
	sovmesh_dtype dtype;
	uint32_t ndim;
	uint64_t shape[SOVMESH_TENSOR_MAX_DIMS];
	uint64_t begin, end;
};

static uint64_t le64_load(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static void le64_store(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* A JSON integer >= 0 into *v; 0 or -1. */
static int json_uint(const json_t *j, uint64_t *v)
{
	if (!json_is_integer(j) || json_integer_value(j) < 0)
		return -1;
	*v = (uint64_t)json_integer_value(j);
	return 0;
}

/* "__metadata__": an object of string values, kept as compact JSON text. */
static int parse_metadata(const json_t *meta, char **text, sovmesh_error *err)
{
	const char *key;
	json_t *val;
	if (!json_is_object(meta))
		return tset_fail(err, -EINVAL, "\"" METADATA_KEY "\" is not a JSON object");
	json_object_foreach((json_t *)meta, key, val)
	{
		if (!json_is_string(val))
			return tset_fail(err, -EINVAL,
			                 "\"" METADATA_KEY "\" value for '%s' is not a string",
			                 key);
	}
	*text = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!*text)
		return tset_fail(err, -ENOMEM, "out of memory copying \"" METADATA_KEY "\"");
	return 0;
}

/* One header entry into *e; checks its own fields, not its neighbours. */
static int parse_entry(const char *name, const json_t *obj, struct entry *e, sovmesh_error *err)
{
	const char *key;
	json_t *val;
	if (!json_is_object(obj))
		return tset_fail(err, -EINVAL, "tensor '%s': entry is not a JSON object", name);
	json_object_foreach((json_t *)obj, key, val)
	{
		if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
		    strcmp(key, "data_offsets") != 0)
			return tset_fail(err, -EINVAL, "tensor '%s': unexpected key '%s'", name,
			                 key);
	}
	memset(e, 0, sizeof(*e));
	e->name = name;

	const json_t *dtype = json_object_get(obj, "dtype");
	if (!dtype)
		return tset_fail(err, -EINVAL, "tensor '%s': missing \"dtype\"", name);
	if (!json_is_string(dtype))
		return tset_fail(err, -EINVAL, "tensor '%s': \"dtype\" is not a string", name);
	e->dtype = tset_dtype_from_name(json_string_value(dtype));
	if (e->dtype == SOVMESH_DTYPE_INVALID)
		return tset_fail(err, -EINVAL, "tensor '%s': unknown dtype '%s'", name,
		                 json_string_value(dtype));

	const json_t *shape = json_object_get(obj, "shape");
	if (!shape)
		return tset_fail(err, -EINVAL, "tensor '%s': missing \"shape\"", name);
	if (!json_is_array(shape))
		return tset_fail(err, -EINVAL, "tensor '%s': \"shape\" is not an array", name);
	if (json_array_size(shape) > SOVMESH_TENSOR_MAX_DIMS)
		return tset_fail(err, -EINVAL, "tensor '%s': %zu dimensions, at most %d supported",
		                 name, json_array_size(shape), SOVMESH_TENSOR_MAX_DIMS);
	e->ndim = (uint32_t)json_array_size(shape);
	uint64_t numel = 1;
	int overflow = 0;
	for (uint32_t i = 0; i < e->ndim; i++) {
		if (json_uint(json_array_get(shape, i), &e->shape[i]) < 0)
			return tset_fail(
			    err, -EINVAL,
			    "tensor '%s': shape entry %u is not a non-negative integer", name, i);
		if (e->shape[i] != 0 && numel > UINT64_MAX / e->shape[i])
			overflow = 1;
		numel *= e->shape[i];
	}
	/* A zero dimension makes an earlier overflow harmless, but such a
	 * shape is nonsense either way. */
	uint64_t esize = sovmesh_dtype_size(e->dtype);
	if (overflow || numel > UINT64_MAX / esize)
		return tset_fail(err, -EINVAL, "tensor '%s': shape overflows 64 bits", name);

	const json_t *offs = json_object_get(obj, "data_offsets");
	if (!offs)
		return tset_fail(err, -EINVAL, "tensor '%s': missing \"data_offsets\"", name);
	if (!json_is_array(offs) || json_array_size(offs) != 2 ||
	    json_uint(json_array_get(offs, 0), &e->begin) < 0 ||
	    json_uint(json_array_get(offs, 1), &e->end) < 0)
		return tset_fail(err, -EINVAL,
		                 "tensor '%s': \"data_offsets\" is not [begin, end] of "
		                 "non-negative integers",
		                 name);
	if (e->begin > e->end)
		return tset_fail(err, -EINVAL,
		                 "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before "
		                 "they begin",
		                 name, e->begin, e->end);
	if (e->end - e->begin != numel * esize)
		return tset_fail(err, -EINVAL,
		                 "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
		                 "] hold %" PRIu64 " bytes, dtype %s and shape need %" PRIu64,
		                 name, e->begin, e->end, e->end - e->begin,
		                 tset_dtype_name(e->dtype), numel * esize);
	return 0;
}

static int cmp_entry_offset(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a;
	const struct entry *y = *(const struct entry *const *)b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

static int cmp_entry_name(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	return strcmp(x->name, y->name);
}

/* The tensors must tile [0, data_len) exactly: no gap, no overlap, no
 * trailing bytes (as the reference's validate_offsets). */
static int check_coverage(struct entry *entries, size_t n, uint64_t data_len, sovmesh_error *err)
{
	int r = 0;
	struct entry **by_off = malloc((n ? n : 1) * sizeof(*by_off));
	if (!by_off)
		return tset_fail(err, -ENOMEM, "out of memory checking data offsets");
	for (size_t i = 0; i < n; i++)
		by_off[i] = &entries[i];
	qsort(by_off, n, sizeof(*by_off), cmp_entry_offset);
	uint64_t cursor = 0;
	const char *prev = NULL;
	for (size_t i = 0; i < n && r == 0; i++) {
		const struct entry *e = by_off[i];
		if (e->end > data_len)
			r = tset_fail(
			    err, -EINVAL,
			    "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past "
			    "the end of the data section (%" PRIu64 " bytes): file truncated?",
			    e->name, e->begin, e->end, data_len);
		else if (e->begin < cursor)
			r = tset_fail(err, -EINVAL,
			              "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
			              "] overlap "
			              "tensor '%s'",
			              e->name, e->begin, e->end, prev);
		else if (e->begin > cursor)
			r = tset_fail(err, -EINVAL,
			              "gap in the data section: bytes [%" PRIu64 ", %" PRIu64 ") "
			              "belong to no tensor (next is '%s')",
			              cursor, e->begin, e->name);
		cursor = e->end;
		prev = e->name;
	}
	if (r == 0 && cursor != data_len)
		r = tset_fail(err, -EINVAL,
		              "%" PRIu64 " trailing bytes after the last tensor's data "
		              "(data section is %" PRIu64 " bytes, tensors cover %" PRIu64 ")",
		              data_len - cursor, data_len, cursor);
	free(by_off);
	return r;
}

/* See safetensors.h.  With copy 0 the tensors' data are views into buf
 * (cast from const: the caller decides whether buf may be written). */
int safetensors_parse(const void *buf, size_t len, int copy, sovmesh_tensor_set **out,
                      sovmesh_error *err)
{
	const unsigned char *p = buf;
	*out = NULL;
	if (len < 8)
		return tset_fail(err, -EINVAL,
		                 "file is %zu bytes, too short for the 8-byte header length", len);
	uint64_t hlen = le64_load(p);
	if (hlen > SAFETENSORS_MAX_HEADER)
		return tset_fail(err, -E2BIG, "header length %" PRIu64 " exceeds the %u-byte limit",
		                 hlen, SAFETENSORS_MAX_HEADER);
	if (hlen > len - 8)
		return tset_fail(err, -EINVAL,
		                 "header length %" PRIu64 " runs past the end of the file (%zu "
		                 "bytes follow the length field)",
		                 hlen, len - 8);
	if (hlen < 2 || p[8] != '{')
		return tset_fail(err, -EINVAL, "header does not start with '{'");

	json_error_t jerr;
	json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (strstr(jerr.text, "duplicate"))
			return tset_fail(err, -EINVAL, "duplicate tensor name or key in header: %s",
			                 jerr.text);
		return tset_fail(err, -EINVAL, "header is not valid JSON: %s (column %d)",
		                 jerr.text, jerr.column);
	}

	int r = 0;
	char *meta_text = NULL;
	struct entry *entries = NULL;
	sovmesh_tensor_set *set = NULL;
	size_t n = 0;
	if (!json_is_object(root)) {
		r = tset_fail(err, -EINVAL, "header is not a JSON object");
		goto out;
	}
	size_t cap = json_object_size(root);
	entries = calloc(cap ? cap : 1, sizeof(*entries));
	if (!entries) {
		r = tset_fail(err, -ENOMEM, "out of memory parsing the header");
		goto out;
	}
	const char *key;
	json_t *val;
	json_object_foreach(root, key, val)
	{
		if (strcmp(key, METADATA_KEY) == 0) {
			r = parse_metadata(val, &meta_text, err);
		} else {
			r = parse_entry(key, val, &entries[n], err);
			n++;
		}
		if (r < 0)
			goto out;
	}
	uint64_t data_len = (uint64_t)(len - 8 - (size_t)hlen);
	r = check_coverage(entries, n, data_len, err);
	if (r < 0)
		goto out;

	qsort(entries, n, sizeof(*entries), cmp_entry_name);
	set = tset_new(NULL, n);
	if (!set) {
		r = tset_fail(err, -ENOMEM, "out of memory building the tensor set");
		goto out;
	}
	unsigned char *data = (unsigned char *)p + 8 + hlen;
	for (size_t i = 0; i < n; i++) {
		struct entry *e = &entries[i];
		if (copy) {
			r = tset_init_tensor(set, i, e->name, e->dtype, e->ndim, e->shape);
			if (r == 0 && e->end > e->begin)
				memcpy(set->tensors[i].data, data + e->begin, e->end - e->begin);
		} else {
			r = tset_init_view(set, i, e->name, e->dtype, e->ndim, e->shape,
			                   data + e->begin);
		}
		if (r < 0) {
			r = tset_fail(err, r, "tensor '%s': %s", e->name,
			              r == -ENOMEM ? "out of memory" : "cannot be stored");
			goto out;
		}
	}
	if (meta_text && tset_set_metadata(set, meta_text) < 0) {
		r = tset_fail(err, -ENOMEM, "out of memory copying \"" METADATA_KEY "\"");
		goto out;
	}
	*out = set;
	set = NULL;
out:
	tset_free(set);
	free(meta_text);
	free(entries);
	json_decref(root);
	return r;
}

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
	const sovmesh_tensor *x = *(const sovmesh_tensor *const *)a;
	const sovmesh_tensor *y = *(const sovmesh_tensor *const *)b;
	return strcmp(x->name, y->name);
}

/* Tensors of `set` sorted by name, checked for the writer.  *order is a
 * malloc'd array of pointers into set->tensors. */
static int writer_order(const sovmesh_tensor_set *set, const sovmesh_tensor ***order,
                        uint64_t *data_len, sovmesh_error *err)
{
	const sovmesh_tensor **o = malloc((set->count ? set->count : 1) * sizeof(*o));
	if (!o)
		return tset_fail(err, -ENOMEM, "out of memory serializing a tensor set");
	uint64_t total = 0;
	int r = 0;
	for (size_t i = 0; i < set->count && r == 0; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		o[i] = t;
		uint64_t need = sovmesh_dtype_size(t->dtype);
		if (!t->name) {
			r = tset_fail(err, -EINVAL, "tensor %zu has no name", i);
			break;
		}
		if (strcmp(t->name, METADATA_KEY) == 0) {
			r = tset_fail(err, -EINVAL, "tensor name '%s' is reserved", t->name);
			break;
		}
		if (need == 0 || t->ndim > SOVMESH_TENSOR_MAX_DIMS) {
			r = tset_fail(err, -EINVAL, "tensor '%s': invalid dtype %d or ndim %u",
			              t->name, (int)t->dtype, t->ndim);
			break;
		}
		for (uint32_t d = 0; d < t->ndim && r == 0; d++) {
			if (t->shape[d] > INT64_MAX ||
			    (t->shape[d] != 0 && need > UINT64_MAX / t->shape[d]))
				r = tset_fail(err, -EINVAL, "tensor '%s': shape overflows 64 bits",
				              t->name);
			need *= t->shape[d];
		}
		if (r < 0)
			break;
		if (need != t->nbytes || (need > 0 && !t->data)) {
			r = tset_fail(err, -EINVAL,
			              "tensor '%s': has %" PRIu64 " bytes of data, dtype and shape "
			              "need %" PRIu64,
			              t->name, t->data ? t->nbytes : 0, need);
			break;
		}
		if (need > INT64_MAX - total) {
			r = tset_fail(err, -EINVAL, "tensor set too large to serialize");
			break;
		}
		total += need;
	}
	if (r == 0 && set->count > 1) {
		/* Sort pointers, not the caller's (const) set. */
		qsort(o, set->count, sizeof(*o), cmp_tensor_ptr_name);
		for (size_t i = 1; i < set->count && r == 0; i++)
			if (strcmp(o[i - 1]->name, o[i]->name) == 0)
				r = tset_fail(err, -EINVAL, "duplicate tensor name '%s'",
				              o[i]->name);
	}
	if (r < 0) {
		free(o);
		return r;
	}
	*order = o;
	*data_len = total;
	return 0;
}

/* The JSON header for tensors in `order`, padded with spaces to a multiple
 * of 8 (as the reference writer does, so data starts 8-aligned).  *hdr is
 * malloc'd, not NUL-terminated. */
static int build_header(const sovmesh_tensor_set *set, const sovmesh_tensor **order, char **hdr,
                        size_t *hdr_len, sovmesh_error *err)
{
	int r = 0;
	char *text = NULL;
	json_t *root = json_object();
	if (!root)
		return tset_fail(err, -ENOMEM, "out of memory serializing a tensor set");
	if (set->metadata_json) {
		json_error_t jerr;
		json_t *meta = json_loads(set->metadata_json, 0, &jerr);
		if (!meta) {
			r = tset_fail(err, -EINVAL, "metadata is not valid JSON: %s", jerr.text);
			goto out;
		}
		char *check = NULL;
		r = parse_metadata(meta, &check, err);
		free(check);
		if (r < 0) {
			json_decref(meta);
			goto out;
		}
		/* First, as the reference writer puts it. */
		if (json_object_set_new(root, METADATA_KEY, meta) < 0) {
			r = tset_fail(err, -ENOMEM, "out of memory serializing metadata");
			goto out;
		}
	}
	uint64_t off = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = order[i];
		json_t *shape = json_array();
		json_t *offs = json_array();
		json_t *ent = json_object();
		int bad = !shape || !offs || !ent;
		for (uint32_t d = 0; !bad && d < t->ndim; d++)
			bad = json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
		bad = bad || json_array_append_new(offs, json_integer((json_int_t)off)) ||
		      json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes)));
		bad = bad ||
		      json_object_set_new(ent, "dtype", json_string(tset_dtype_name(t->dtype))) ||
		      json_object_set(ent, "shape", shape) ||
		      json_object_set(ent, "data_offsets", offs) ||
		      json_object_set(root, t->name, ent);
		json_decref(shape);
		json_decref(offs);
		json_decref(ent);
		if (bad) {
			/* json_string/json_object_set refuse invalid UTF-8 too. */
			r = tset_fail(err, -EINVAL,
			              "tensor '%s': cannot be written (name not UTF-8, or out of "
			              "memory)",
			              t->name);
			goto out;
		}
		off += t->nbytes;
	}
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!text) {
		r = tset_fail(err, -ENOMEM, "out of memory serializing a tensor set");
		goto out;
	}
	size_t len = strlen(text);
	size_t padded = len + (8 - len % 8) % 8;
	if (padded > SAFETENSORS_MAX_HEADER) {
		r = tset_fail(err, -E2BIG, "header would be %zu bytes, over the %u-byte limit",
		              padded, SAFETENSORS_MAX_HEADER);
		goto out;
	}
	*hdr = malloc(padded ? padded : 1);
	if (!*hdr) {
		r = tset_fail(err, -ENOMEM, "out of memory serializing a tensor set");
		goto out;
	}
	memcpy(*hdr, text, len);
	memset(*hdr + len, ' ', padded - len);
	*hdr_len = padded;
out:
	free(text);
	json_decref(root);
	return r;
}

/* Header and write order for `set`; free(*order) and free(*hdr) after. */
static int prepare(const sovmesh_tensor_set *set, const sovmesh_tensor ***order, char **hdr,
                   size_t *hdr_len, uint64_t *data_len, sovmesh_error *err)
{
	int r = writer_order(set, order, data_len, err);
	if (r < 0)
		return r;
	r = build_header(set, *order, hdr, hdr_len, err);
	if (r < 0) {
		free(*order);
		*order = NULL;
	}
	return r;
}

/* See safetensors.h.  *out is malloc'd; the caller frees it. */
int safetensors_serialize(const sovmesh_tensor_set *set, void **out, size_t *out_len,
                          sovmesh_error *err)
{
	const sovmesh_tensor **order;
	char *hdr;
	size_t hdr_len;
	uint64_t data_len;
	*out = NULL;
	*out_len = 0;
	int r = prepare(set, &order, &hdr, &hdr_len, &data_len, err);
	if (r < 0)
		return r;
	if (data_len > SIZE_MAX - 8 - hdr_len) {
		r = tset_fail(err, -ENOMEM, "tensor set too large to serialize in memory");
		goto out;
	}
	size_t total = 8 + hdr_len + (size_t)data_len;
	unsigned char *buf = malloc(total);
	if (!buf) {
		r = tset_fail(err, -ENOMEM, "out of memory serializing %zu bytes", total);
		goto out;
	}
	le64_store(buf, hdr_len);
	memcpy(buf + 8, hdr, hdr_len);
	size_t pos = 8 + hdr_len;
	for (size_t i = 0; i < set->count; i++) {
		if (order[i]->nbytes)
			memcpy(buf + pos, order[i]->data, (size_t)order[i]->nbytes);
		pos += (size_t)order[i]->nbytes;
	}
	*out = buf;
	*out_len = total;
out:
	free(order);
	free(hdr);
	return r;
}

/* See safetensors.h.  Streams the data from the set (no second in-memory
 * copy); the file is created 0600 since adapters are private. */
int safetensors_write_file(const char *path, const sovmesh_tensor_set *set, sovmesh_error *err)
{
	const sovmesh_tensor **order;
	char *hdr;
	size_t hdr_len;
	uint64_t data_len;
	sovmesh_error inner = {0};
	int r = prepare(set, &order, &hdr, &hdr_len, &data_len, &inner);
	if (r < 0)
		return tset_fail(err, r, "%s: %s", path, inner.message);
	unsigned char len8[8];
	le64_store(len8, hdr_len);
	struct iovec *parts = calloc(set->count + 2, sizeof(*parts));
	if (!parts) {
		r = tset_fail(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	parts[0] = (struct iovec){.iov_base = len8, .iov_len = 8};
	parts[1] = (struct iovec){.iov_base = hdr, .iov_len = hdr_len};
	for (size_t i = 0; i < set->count; i++)
		parts[i + 2] = (struct iovec){.iov_base = order[i]->data,
		                              .iov_len = (size_t)order[i]->nbytes};
	r = state_file_write(path, parts, set->count + 2, err);
out:
	free(parts);
	free(order);
	free(hdr);
	return r;
}

/* See safetensors.h.  The mapping is private and writable (copy-on-write),
 * so a plugin that edits a loaded set in place never touches the file.
 * Truncating the file while the set is alive raises SIGBUS, as with any
 * mmap reader; the core only maps files it owns or was handed. */
int safetensors_read_file(const char *path, sovmesh_tensor_set **out, sovmesh_error *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return tset_fail(err, -errno, "%s: cannot open: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		close(fd);
		return tset_fail(err, r, "%s: cannot stat: %s", path, strerror(-r));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return tset_fail(err, -EINVAL, "%s: not a regular file", path);
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		close(fd);
		return tset_fail(err, -EFBIG, "%s: file too large to map", path);
	}
	size_t len = (size_t)st.st_size;
	void *map = NULL;
	if (len > 0) {
		map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			int r = -errno;
			close(fd);
			return tset_fail(err, r, "%s: cannot mmap: %s", path, strerror(-r));
		}
	}
	close(fd);

	sovmesh_error inner = {0};
	static const unsigned char empty[1];
	int r = safetensors_parse(map ? map : empty, len, 0, out, &inner);
	if (r < 0) {
		if (map)
			munmap(map, len);
		return tset_fail(err, r, "%s: %s", path, inner.message);
	}
	if (map)
		tset_adopt_mapping(*out, map, len);
	return 0;
}
