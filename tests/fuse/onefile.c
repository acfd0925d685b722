/* onefile: a FUSE filesystem with exactly one file, /disk.img, passed through to a real file.
 *
 * The hung-disk rig of the stallwatch end-to-end tests (crates/agent/tests/e2e/hung.rs) puts a
 * loop device on /disk.img and ext4 on the loop device. Every read and write of the loop device
 * becomes a request to this process (the file is opened with direct_io, so the kernel keeps no
 * page cache of it), so SIGSTOP on this process hangs every I/O of that ext4 in D state, as a
 * stuck EBS volume or a hung NFS server would, and SIGCONT resumes it.
 *
 * Usage: onefile BACKING_FILE MOUNTPOINT [fuse options, e.g. -f -s]
 * Build: gcc -Wall -O2 onefile.c $(pkg-config --cflags --libs fuse3) -o onefile
 */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *NAME = "/disk.img";
static int backing = -1;

static int of_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, NAME) != 0)
        return -ENOENT;
    if (fstat(backing, st) != 0)
        return -errno;
    return 0;
}

static int of_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, NAME + 1, NULL, 0, 0);
    return 0;
}

static int of_open(const char *path, struct fuse_file_info *fi) {
    if (strcmp(path, NAME) != 0)
        return -ENOENT;
    /* No page cache in the kernel for this file: every loop-device I/O reaches us. */
    fi->direct_io = 1;
    return 0;
}

static int of_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    ssize_t r = pread(backing, buf, n, off);
    return r < 0 ? -errno : (int)r;
}

static int of_write(const char *path, const char *buf, size_t n, off_t off,
                    struct fuse_file_info *fi) {
    (void)path; (void)fi;
    ssize_t r = pwrite(backing, buf, n, off);
    return r < 0 ? -errno : (int)r;
}

static int of_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    return (datasync ? fdatasync(backing) : fsync(backing)) != 0 ? -errno : 0;
}

static int of_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    (void)fi;
    if (strcmp(path, NAME) != 0)
        return -ENOENT;
    return ftruncate(backing, size) != 0 ? -errno : 0;
}

static const struct fuse_operations ops = {
    .getattr = of_getattr,
    .readdir = of_readdir,
    .open = of_open,
    .read = of_read,
    .write = of_write,
    .fsync = of_fsync,
    .truncate = of_truncate,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING_FILE MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    backing = open(argv[1], O_RDWR | O_CLOEXEC);
    if (backing < 0) {
        perror(argv[1]);
        return 1;
    }
    /* fuse_main sees: prog MOUNTPOINT [options]. */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
