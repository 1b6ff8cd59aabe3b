/* QR code rendering: terminal text, SVG, grayscale pixels, PNG (qr.h). */
#include "qr.h"

#include <errno.h>
#include <png.h>
#include <qrencode.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "state_file.h"

/* Encode `data` in byte mode, level M, smallest version that fits. */
static int encode(const char *data, QRcode **out, sovmesh_error *err)
{
	*out = NULL;
	if (!data || !data[0])
		return sovmesh_fail(err, -EINVAL, "QR code data is empty");
	size_t len = strlen(data);
	if (len > QR_MAX_INPUT)
		return sovmesh_fail(err, -E2BIG, "QR code data is %zu bytes; the limit is %d", len,
		                    QR_MAX_INPUT);
	errno = 0;
	QRcode *qr = QRcode_encodeString8bit(data, 0, QR_ECLEVEL_M);
	if (!qr) {
		int e = errno ? errno : ENOMEM;
		if (e == ERANGE)
			return sovmesh_fail(
			    err, -E2BIG, "QR code data (%zu bytes) does not fit in a QR code", len);
		return sovmesh_fail(err, -e, "cannot encode the QR code: %s", strerror(e));
	}
	*out = qr;
	return 0;
}

/* Module (x, y) in quiet-zone coordinates: 1 when dark. */
static int dark(const QRcode *qr, int x, int y)
{
	x -= QR_QUIET_ZONE;
	y -= QR_QUIET_ZONE;
	if (x < 0 || y < 0 || x >= qr->width || y >= qr->width)
		return 0;
	return qr->data[(size_t)y * (size_t)qr->width + (size_t)x] & 1;
}

int qr_render_text(const char *data, char **out, sovmesh_error *err)
{
	*out = NULL;
	QRcode *qr;
	int r = encode(data, &qr, err);
	if (r < 0)
		return r;
	int n = qr->width + 2 * QR_QUIET_ZONE;
	int lines = (n + 1) / 2;
	/* Each cell is at most 3 UTF-8 bytes; one '\n' per line. */
	size_t cap = (size_t)lines * ((size_t)n * 3 + 1) + 1;
	char *buf = malloc(cap);
	if (!buf) {
		QRcode_free(qr);
		return sovmesh_fail(err, -ENOMEM, "out of memory rendering the QR code");
	}
	static const char *const cell[4] = {" ", "\u2584", "\u2580", "\u2588"};
	char *p = buf;
	for (int line = 0; line < lines; line++) {
		for (int x = 0; x < n; x++) {
			/* The odd last row's lower half is light, like the quiet zone. */
			int top = dark(qr, x, 2 * line);
			int bottom = 2 * line + 1 < n ? dark(qr, x, 2 * line + 1) : 0;
			const char *c = cell[top * 2 + bottom];
			size_t cl = strlen(c);
			memcpy(p, c, cl);
			p += cl;
		}
		*p++ = '\n';
	}
	*p = '\0';
	QRcode_free(qr);
	*out = buf;
	return 0;
}

int qr_render_svg(const char *data, char **out, sovmesh_error *err)
{
	*out = NULL;
	QRcode *qr;
	int r = encode(data, &qr, err);
	if (r < 0)
		return r;
	int n = qr->width + 2 * QR_QUIET_ZONE;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f) {
		QRcode_free(qr);
		return sovmesh_fail(err, -ENOMEM, "out of memory rendering the QR code");
	}
	int px = n * QR_SVG_PIXELS_PER_MODULE;
	fprintf(f,
	        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" "
	        "height=\"%d\" viewBox=\"0 0 %d %d\" shape-rendering=\"crispEdges\">"
	        "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/><path fill=\"#000\" d=\"",
	        px, px, n, n, n, n);
	/* Runs of dark modules along each row keep the path short. */
	for (int y = 0; y < n; y++) {
		for (int x = 0; x < n;) {
			if (!dark(qr, x, y)) {
				x++;
				continue;
			}
			int run = 1;
			while (x + run < n && dark(qr, x + run, y))
				run++;
			fprintf(f, "M%d %dh%dv1h-%dz", x, y, run, run);
			x += run;
		}
	}
	fputs("\"/></svg>\n", f);
	int bad = ferror(f);
	if (fclose(f) != 0 || bad) {
		free(buf);
		QRcode_free(qr);
		return sovmesh_fail(err, -ENOMEM, "out of memory rendering the QR code");
	}
	QRcode_free(qr);
	*out = buf;
	return 0;
}

int qr_render_gray(const char *data, int scale, unsigned char **pixels, int *side,
                   sovmesh_error *err)
{
	*pixels = NULL;
	*side = 0;
	if (scale < 1 || scale > QR_MAX_SCALE)
		return sovmesh_fail(err, -EINVAL, "QR code scale %d is out of range 1..%d", scale,
		                    QR_MAX_SCALE);
	QRcode *qr;
	int r = encode(data, &qr, err);
	if (r < 0)
		return r;
	int n = qr->width + 2 * QR_QUIET_ZONE;
	size_t s = (size_t)n * (size_t)scale;
	unsigned char *img = malloc(s * s);
	if (!img) {
		QRcode_free(qr);
		return sovmesh_fail(err, -ENOMEM, "out of memory rendering the QR code");
	}
	for (size_t y = 0; y < s; y++) {
		unsigned char *row = img + y * s;
		for (size_t x = 0; x < s; x++)
			row[x] =
			    dark(qr, (int)(x / (size_t)scale), (int)(y / (size_t)scale)) ? 0 : 255;
	}
	QRcode_free(qr);
	*pixels = img;
	*side = (int)s;
	return 0;
}

/* libpng writes into this growing buffer; on failure it longjmps, so all
 * state lives here rather than in locals of the function calling setjmp. */
typedef struct png_out {
	unsigned char *buf;
	size_t len, cap;
	unsigned char *pixels;
	png_bytep *rows;
	char msg[200];
} png_out;

static void png_out_write(png_structp png, png_bytep data, size_t n)
{
	png_out *o = png_get_io_ptr(png);
	if (n > o->cap - o->len) {
		size_t cap = o->cap ? o->cap : 4096;
		while (n > cap - o->len)
			cap *= 2;
		unsigned char *nb = realloc(o->buf, cap);
		if (!nb)
			png_error(png, "out of memory");
		o->buf = nb;
		o->cap = cap;
	}
	memcpy(o->buf + o->len, data, n);
	o->len += n;
}

static void png_out_flush(png_structp png)
{
	(void)png;
}

static void png_out_error(png_structp png, png_const_charp msg)
{
	png_out *o = png_get_error_ptr(png);
	snprintf(o->msg, sizeof(o->msg), "%s", msg);
	png_longjmp(png, 1);
}

static void png_out_warning(png_structp png, png_const_charp msg)
{
	/* Nothing we write should warn; keep libpng off stderr regardless. */
	(void)png;
	(void)msg;
}

/* Encode o->pixels (side x side) into o->buf.  0 or 1 on a libpng error
 * (message in o->msg); the caller frees everything in `o`. */
static int png_encode(png_out *o, int side)
{
	png_structp png =
	    png_create_write_struct(PNG_LIBPNG_VER_STRING, o, png_out_error, png_out_warning);
	if (!png) {
		snprintf(o->msg, sizeof(o->msg), "out of memory");
		return 1;
	}
	png_infop info = png_create_info_struct(png);
	if (!info) {
		png_destroy_write_struct(&png, NULL);
		snprintf(o->msg, sizeof(o->msg), "out of memory");
		return 1;
	}
	if (setjmp(png_jmpbuf(png))) {
		png_destroy_write_struct(&png, &info);
		return 1;
	}
	png_set_write_fn(png, o, png_out_write, png_out_flush);
	png_set_IHDR(png, info, (png_uint_32)side, (png_uint_32)side, 8, PNG_COLOR_TYPE_GRAY,
	             PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
	png_set_compression_level(png, 9);
	for (int y = 0; y < side; y++)
		o->rows[y] = o->pixels + (size_t)y * (size_t)side;
	png_set_rows(png, info, o->rows);
	png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
	png_destroy_write_struct(&png, &info);
	return 0;
}

int qr_render_png_memory(const char *data, int scale, unsigned char **png, size_t *len,
                         sovmesh_error *err)
{
	*png = NULL;
	*len = 0;
	png_out o = {0};
	int side;
	int r = qr_render_gray(data, scale, &o.pixels, &side, err);
	if (r < 0)
		return r;
	o.rows = calloc((size_t)side, sizeof(*o.rows));
	if (!o.rows) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory rendering the QR code");
	} else if (png_encode(&o, side) != 0) {
		r = sovmesh_fail(err, strcmp(o.msg, "out of memory") ? -EIO : -ENOMEM,
		                 "cannot encode the QR code as PNG: %s", o.msg);
	} else {
		*png = o.buf;
		*len = o.len;
		o.buf = NULL;
	}
	free(o.buf);
	free(o.rows);
	free(o.pixels);
	return r;
}

int qr_render_png(const char *data, const char *path, int scale, sovmesh_error *err)
{
	unsigned char *png;
	size_t len;
	int r = qr_render_png_memory(data, scale, &png, &len, err);
	if (r < 0)
		return r;
	struct iovec part = {.iov_base = png, .iov_len = len};
	r = state_file_write(path, &part, 1, err);
	free(png);
	return r;
}
