/* Crash-safe file replacement (see atomic_file.h). */
#include "atomic_file.h"

#include <errno.h>
#include <fcntl.h>
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

int atomic_fsync_parent(const char *path)
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

int atomic_file_write(const char *path, const struct iovec *parts, size_t n, sovmesh_error *err)
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
	r = atomic_fsync_parent(path);
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
