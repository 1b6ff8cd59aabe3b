/* State files: crash-safe writes and bounded reads (see state_file.h). */
#include "state_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tensor_set.h"

static int write_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len > 0) {
		/* Linux writes at most ~2 GiB per call; loop on short writes. */
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int state_file_fsync_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	if (!slash)
		dir = strdup(".");
	else if (slash == path)
		dir = strdup("/");
	else
		dir = strndup(path, (size_t)(slash - path));
	if (!dir)
		return -ENOMEM;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int state_file_write(const char *path, const struct iovec *parts, size_t n, sovmesh_error *err)
{
	char *tmp = NULL;
	int fd = -1, r;
	const char *what = "cannot create a temporary file";
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
		tmp = NULL;
		r = -ENOMEM;
		goto fail;
	}
	/* mkostemp creates the file 0600: state files are private. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		free(tmp);
		tmp = NULL; /* nothing to unlink */
		goto fail;
	}
	what = "cannot write";
	r = 0;
	for (size_t i = 0; i < n && r == 0; i++)
		r = write_all(fd, parts[i].iov_base, parts[i].iov_len);
	if (r < 0)
		goto fail;
	what = "cannot fsync";
	if (fsync(fd) < 0) {
		r = -errno;
		goto fail;
	}
	what = "cannot close";
	int c = close(fd);
	fd = -1;
	if (c < 0) {
		r = -errno;
		goto fail;
	}
	what = "cannot rename the temporary file into place";
	if (rename(tmp, path) < 0) {
		r = -errno;
		goto fail;
	}
	free(tmp);
	tmp = NULL;
	what = "cannot fsync the directory";
	r = state_file_fsync_parent(path);
	if (r < 0)
		goto fail;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	return tset_fail(err, r, "%s: %s: %s", path, what, strerror(-r));
}

int state_file_read(const char *path, size_t max, char **out, size_t *len, struct stat *st,
                    sovmesh_error *err)
{
	*out = NULL;
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return tset_fail(err, -errno, "%s: cannot open: %s", path, strerror(errno));
	struct stat sb;
	char *buf = NULL;
	size_t n = 0;
	int r = 0;
	if (fstat(fd, &sb) < 0) {
		r = tset_fail(err, -errno, "%s: cannot stat: %s", path, strerror(errno));
		goto out;
	}
	if (st)
		*st = sb;
	if (!S_ISREG(sb.st_mode)) {
		r = tset_fail(err, -EINVAL, "%s: not a regular file", path);
		goto out;
	}
	if ((uint64_t)sb.st_size > max) {
		r = tset_fail(err, -E2BIG, "%s: %lld bytes, over the %zu-byte limit", path,
		              (long long)sb.st_size, max);
		goto out;
	}
	size_t cap = (size_t)sb.st_size;
	buf = malloc(cap + 1);
	if (!buf) {
		r = tset_fail(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	while (n < cap) {
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = tset_fail(err, -errno, "%s: cannot read: %s", path, strerror(errno));
			goto out;
		}
		if (got == 0)
			break; /* shrank while we read: take what is there */
		n += (size_t)got;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return r;
}
