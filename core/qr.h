/*
 * QR codes for pairing (issue 3): the sovmesh://pair?... URI drawn in the
 * terminal, as SVG for the Network page and as a PNG file.  All renderers
 * encode the whole input in 8-bit (byte) mode at error-correction level M,
 * with the smallest version that fits, and add the 4-module quiet zone the
 * standard asks for.  Decoding images is qr_scan.h.
 */
#ifndef SOVMESH_CORE_QR_H
#define SOVMESH_CORE_QR_H

#include <stddef.h>
#include <sovmesh/plugin.h>

/* Longest input accepted, in bytes (version 40-M holds 2331 bytes). */
#define QR_MAX_INPUT 2048
/* Light modules around the symbol on each side. */
#define QR_QUIET_ZONE 4
/* Pixels per module accepted by the raster renderers. */
#define QR_MAX_SCALE 32
/* Pixels per module the SVG's width/height attributes ask for. */
#define QR_SVG_PIXELS_PER_MODULE 4

/*
 * Draw `data` (a NUL-terminated string, 1..QR_MAX_INPUT bytes, borrowed)
 * with the half-block characters "▀▄█ " (UTF-8), two module rows per text
 * line, quiet zone included, every line ending in '\n'.  A dark module is
 * a printed (foreground) cell and a light module a space, so the code
 * scans on the usual dark-text-on-light-background terminal; on a light-on-
 * dark terminal it shows inverted, which many phone scanners also read but
 * not all (the caller may suggest the PNG/SVG then).  Lines:
 * (size + 2*QR_QUIET_ZONE + 1) / 2.  *out is malloc'd, caller frees.
 * 0 or -errno (-EINVAL empty, -E2BIG too long, -ENOMEM) with a message.
 */
int qr_render_text(const char *data, char **out, sovmesh_error *err);

/*
 * A standalone SVG document of `data` (borrowed, as above): black modules
 * on a white rectangle, one <path> made of unit squares (each horizontal
 * run of dark modules is one "M x y h n v1 h -n z" rectangle), viewBox
 * "0 0 N N" with N = size + 2*QR_QUIET_ZONE in module units, width and
 * height N*QR_SVG_PIXELS_PER_MODULE, shape-rendering crispEdges.  Ends in
 * "</svg>\n".  *out is malloc'd, caller frees.  0 or -errno with a message.
 */
int qr_render_svg(const char *data, char **out, sovmesh_error *err);

/*
 * The code as 8-bit grayscale pixels (0 = dark, 255 = light), quiet zone
 * included, `scale` (1..QR_MAX_SCALE) pixels per module: a square of
 * *side x *side bytes, row-major, no padding.  *pixels is malloc'd,
 * caller frees.  0 or -errno with a message.
 */
int qr_render_gray(const char *data, int scale, unsigned char **pixels, int *side,
                   sovmesh_error *err);

/*
 * The code as an 8-bit grayscale PNG in memory (see qr_render_gray for
 * `scale`).  *png is malloc'd (*len bytes), caller frees.  0 or -errno
 * with a message.
 */
int qr_render_png_memory(const char *data, int scale, unsigned char **png, size_t *len,
                         sovmesh_error *err);

/*
 * Write the PNG of qr_render_png_memory() to `path` (borrowed), replacing
 * it atomically (state_file.h; the file is created 0600).  0 or -errno
 * with a message naming `path` when the write fails.
 */
int qr_render_png(const char *data, const char *path, int scale, sovmesh_error *err);

#endif
