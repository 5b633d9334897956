#!/usr/bin/env python3
"""A passthrough FUSE filesystem whose fsync can be made to fail or to be slow, to test what
the agent does when the disk stops persisting data or turns into a gray failure.

    faultyfs.py BACKING_DIR MOUNTPOINT

Every operation passes through to BACKING_DIR. While the file BACKING_DIR/.fail-fsync exists
(created through the backing dir, not the mount), fsync and fdatasync answer EIO, as a dying
disk does; writes still reach the page cache, which is exactly the dangerous case. While
BACKING_DIR/.slow-fsync exists, every fsync first sleeps for the number of milliseconds it
contains (100 if it is empty), as a disk with a failing controller does.
"""
import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations


class FaultyFs(Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self):
        return os.path.exists(os.path.join(self.root, ".fail-fsync"))

    def _slow_seconds(self):
        try:
            with open(os.path.join(self.root, ".slow-fsync")) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return 0.0
        return (int(text) if text else 100) / 1000.0

    def access(self, path, mode):
        if not os.access(self._full(path), mode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
        return {key: getattr(st, key) for key in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._full(path))

    def unlink(self, path):
        return os.unlink(self._full(path))

    def rename(self, old, new):
        return os.rename(self._full(old), self._full(new))

    def chmod(self, path, mode):
        return os.chmod(self._full(path), mode)

    def utimens(self, path, times=None):
        return os.utime(self._full(path), times)

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {key: getattr(st, key) for key in keys}

    def open(self, path, flags):
        return os.open(self._full(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            return os.ftruncate(fh, length)
        with open(self._full(path), "r+") as f:
            f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        if self._failing():
            raise FuseOSError(errno.EIO)
        delay = self._slow_seconds()
        if delay > 0:
            time.sleep(delay)
        return os.fdatasync(fh) if datasync else os.fsync(fh)


if __name__ == "__main__":
    FUSE(FaultyFs(sys.argv[1]), sys.argv[2], foreground=True, nothreads=True)
