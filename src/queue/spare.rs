//! Segment files before they hold frames: a new one preallocated
//! (`posix_fallocate`), a spare written with zeros so that fdatasyncs into
//! it flush only data, and a spare found at start-up kept only if whole.
//! Blocking file system calls; `segment` runs the slow ones on a blocking
//! thread.
//!
//! Must not: know what a frame is.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A new segment with preallocated (unwritten) blocks: the fallback when
/// no zero-filled spare is ready.
pub(super) fn allocate(path: &Path, cap: u64) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    // Preallocating spares later fdatasyncs the journaling of a growing size.
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, cap as libc::off_t) };
    if rc != 0 {
        let _ = fs::remove_file(path);
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(file)
}

/// The spare at `path` if it has its full size. A crash while it was
/// written leaves it short; a power loss may leave holes, which read as
/// zeros too and cost only the metadata syncs the spare is meant to save.
pub(super) fn keep_spare(path: &Path, size: u64) -> io::Result<Option<File>> {
    let file = File::options().read(true).write(true).open(path)?;
    if file.metadata()?.len() == size {
        return Ok(Some(file));
    }
    drop(file);
    fs::remove_file(path)?;
    Ok(None)
}

/// Writes a file of `size` zeros and syncs it (blocking thread).
pub(super) fn zero_filled(path: &Path, size: u64) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}
