/*
 * Reading a QR code from a photo or screenshot (`sovmesh pair scan IMAGE`).
 * The image is untrusted input: PNG or JPEG only, recognised by its magic
 * bytes; bounded in file size and in declared pixels before anything is
 * decoded (decompression bombs); every libpng/libjpeg error becomes one
 * line naming the image.  The pixels are turned into 8-bit grayscale
 * (transparency composited onto white) and handed to zbar with only the
 * QR code symbology enabled, in binary mode so the bytes come back exactly
 * as encoded.
 */
#ifndef SOVMESH_CORE_QR_SCAN_H
#define SOVMESH_CORE_QR_SCAN_H

#include <stddef.h>
#include <sovmesh/plugin.h>

/* Largest image file read. */
#define QR_SCAN_MAX_FILE (32u * 1024u * 1024u)
/* Largest declared width*height decoded (the fuzz build lowers it). */
#ifndef QR_SCAN_MAX_PIXELS
#define QR_SCAN_MAX_PIXELS (64u * 1024u * 1024u)
#endif

/*
 * Decode the first QR code in the PNG or JPEG file `path` (borrowed).
 * *text is the code's contents, malloc'd and NUL-terminated, caller frees;
 * NULL on failure.  0 or -errno with a message starting "PATH: ":
 * -errno from open/read ("cannot open: ..."), -EFBIG (file or image too
 * large), -EINVAL ("not a PNG or JPEG image", empty file, not a regular
 * file), -EBADMSG (corrupt or truncated image, a code holding a NUL byte),
 * -ENODATA ("no QR code found in the image"), -ENOMEM.
 */
int qr_scan_file(const char *path, char **text, sovmesh_error *err);

/*
 * As qr_scan_file() on the `len` bytes at `buf` (borrowed; at most
 * QR_SCAN_MAX_FILE).  `label` (borrowed, may be NULL for "image") starts
 * every message.
 */
int qr_scan_memory(const void *buf, size_t len, const char *label, char **text, sovmesh_error *err);

#endif
