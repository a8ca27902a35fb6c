//! Message bodies in append-only segment files, one active segment per shard.
//!
//! Owns: [`Segments`]: appending a body and returning its [`BodyRef`],
//! reading it back (checked against its CRC-32), counting references per
//! segment, and unlinking a segment once it is sealed and nothing refers to
//! it. Files live in `shard-k/segments/NNNNNNNNNN.seg`.
//!
//! Why segments (measured on this machine, 2026-11-26, ext4 on virtio): a
//! file per message needs one fsync per message, and ext4 serialises the
//! journal commits that new files force: create + write + fdatasync topped
//! out at 1,000-2,000 files/s whether from 1, 8, 20 or 64 OS threads or
//! through io_uring. Writing into a preallocated segment and issuing *one*
//! fdatasync per group-commit round reached 43,000 msgs/s of 10 KiB at
//! batches of 20 (0.46 ms per fdatasync). sled itself is not used for bodies
//! because it writes large values as blob files it never frees (see
//! `../shared/design/stack.md`). Here space comes back whole, segment by
//! segment, when the last message in a segment is done.
//!
//! Known cost: one long-deferred message keeps its whole segment on disk.
//! `segment_bytes` bounds that waste per pinned segment.
//!
//! Concurrency: lives on its shard's executor (`RefCell`, not shared).
//! Writes go through io_uring (glommio `BufferedFile::write_at`) at offsets
//! reserved synchronously, so many appends run at once; fdatasync happens in
//! the group-commit round on the blocking thread, through a `std::fs::File`
//! handle of the same file.
//!
//! Must not: decide durability. A body is durable only after the commit
//! round that synced its segment; `queue::commit` owns that order.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::BufferedFile;
use serde::{Deserialize, Serialize};

/// Where a body lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BodyRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

struct SegmentFile {
    /// For fdatasync and reads; shared with the blocking thread.
    file: Arc<File>,
    /// For io_uring writes; created on first append (needs an executor).
    uring: Option<Rc<BufferedFile>>,
    /// Bodies reserved in this segment and not yet released.
    refs: u64,
}

struct State {
    files: BTreeMap<u32, SegmentFile>,
    /// The segment appends go to, with its capacity and next free offset.
    active: Option<(u32, u64, u64)>,
    /// Segments written since the last commit round.
    unsynced: HashSet<u32>,
    /// A segment was created since the last round: the directory needs a sync.
    dir_changed: bool,
}

pub struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    state: RefCell<State>,
}

fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.seg"))
}

impl Segments {
    /// Opens the segment directory (creating it). Existing segments are
    /// sealed: appends always start a new one.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<Segments> {
        fs::create_dir_all(dir)?;
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let seq = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            match seq {
                Some(seq) => {
                    let file = File::options().read(true).write(true).open(entry.path())?;
                    files.insert(
                        seq,
                        SegmentFile {
                            file: Arc::new(file),
                            uring: None,
                            refs: 0,
                        },
                    );
                }
                None => log::warn!("spool: ignoring stray file {:?}", entry.path()),
            }
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: RefCell::new(State {
                files,
                active: None,
                unsynced: HashSet::new(),
                dir_changed: false,
            }),
        })
    }

    /// Appends a body. Returns once the bytes are written (not yet synced).
    pub async fn append(&self, body: Vec<u8>) -> io::Result<BodyRef> {
        let len = body.len() as u64;
        let crc32 = crc32fast::hash(&body);
        let (segment, offset, file) = self.reserve(len)?;
        let written = file.write_at(body, offset).await;
        let r = BodyRef {
            segment,
            offset,
            len,
            crc32,
        };
        match written {
            Ok(n) if n as u64 == len => {
                // Marked only now that the bytes are written: a commit round
                // that started earlier must not count this write as synced.
                self.state.borrow_mut().unsynced.insert(segment);
                Ok(r)
            }
            // A short write into a preallocated file means the device failed.
            Ok(_) => {
                self.release(&r);
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short write to segment",
                ))
            }
            Err(e) => {
                self.release(&r);
                Err(e.into())
            }
        }
    }

    /// Picks the offset for `len` bytes, rotating to a new segment when the
    /// active one is full. Synchronous, so concurrent appends never overlap.
    fn reserve(&self, len: u64) -> io::Result<(u32, u64, Rc<BufferedFile>)> {
        let mut st = self.state.borrow_mut();
        let fits = matches!(st.active, Some((_, cap, next)) if next + len <= cap);
        if !fits {
            self.rotate(&mut st, len)?;
        }
        let (seq, cap, next) = st.active.expect("rotate sets it");
        st.active = Some((seq, cap, next + len));
        let seg = st.files.get_mut(&seq).expect("active segment is open");
        seg.refs += 1;
        let uring = match &seg.uring {
            Some(u) => u.clone(),
            None => {
                let fd = seg.file.try_clone()?.into_raw_fd();
                // SAFETY: `fd` is a fresh duplicate we own; BufferedFile closes it.
                let u = Rc::new(unsafe { BufferedFile::from_raw_fd(fd) });
                seg.uring = Some(u.clone());
                u
            }
        };
        Ok((seq, next, uring))
    }

    /// Seals the active segment and starts a new preallocated one (rare:
    /// once per `segment_bytes` of mail, so done inline).
    fn rotate(&self, st: &mut State, len: u64) -> io::Result<()> {
        let old = st.active.take().map(|(seq, _, _)| seq);
        let seq = st.files.keys().next_back().map_or(1, |s| s + 1);
        let cap = self.segment_bytes.max(len);
        let path = segment_path(&self.dir, seq);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Preallocating makes each later fdatasync cheaper: it no longer has
        // to journal a growing file size.
        // SAFETY: plain syscall on a descriptor we own.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, cap as libc::off_t) };
        if rc != 0 {
            let _ = fs::remove_file(&path);
            return Err(io::Error::from_raw_os_error(rc));
        }
        st.files.insert(
            seq,
            SegmentFile {
                file: Arc::new(file),
                uring: None,
                refs: 0,
            },
        );
        st.active = Some((seq, cap, 0));
        st.dir_changed = true;
        if let Some(old) = old {
            self.unlink_if_unused(st, old);
        }
        Ok(())
    }

    /// What the next commit round must sync: segments with writes completed
    /// since the last call, and whether the directory gained a segment (its
    /// name is durable only once the directory is synced).
    pub fn take_unsynced(&self) -> (Vec<Arc<File>>, bool) {
        let mut st = self.state.borrow_mut();
        let seqs: Vec<u32> = st.unsynced.drain().collect();
        let files = seqs
            .iter()
            .filter_map(|s| st.files.get(s).map(|f| f.file.clone()))
            .collect();
        (files, std::mem::take(&mut st.dir_changed))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops one reference (message done, or its append/commit failed).
    pub fn release(&self, r: &BodyRef) {
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st.files.get_mut(&r.segment) {
            seg.refs = seg.refs.saturating_sub(1);
        }
        self.unlink_if_unused(&mut st, r.segment);
    }

    fn unlink_if_unused(&self, st: &mut State, seq: u32) {
        let active = st.active.map(|(s, _, _)| s);
        let unused = st.files.get(&seq).is_some_and(|f| f.refs == 0);
        if unused && active != Some(seq) {
            st.files.remove(&seq);
            st.unsynced.remove(&seq);
            if let Err(e) = fs::remove_file(segment_path(&self.dir, seq)) {
                log::warn!("spool: cannot remove segment {seq}: {e}");
            }
        }
    }

    /// Recovery: counts a reference found in a queue record, after checking
    /// that the segment exists and holds the whole body.
    pub fn adopt(&self, r: &BodyRef) -> Result<(), String> {
        let mut st = self.state.borrow_mut();
        let seg = st
            .files
            .get_mut(&r.segment)
            .ok_or_else(|| format!("segment {} is missing", r.segment))?;
        let size = seg.file.metadata().map_err(|e| e.to_string())?.len();
        if r.offset.checked_add(r.len).is_none_or(|end| end > size) {
            return Err(format!(
                "segment {} has {size} bytes, body needs {}+{}",
                r.segment, r.offset, r.len
            ));
        }
        seg.refs += 1;
        Ok(())
    }

    /// Recovery: unlinks segments no record refers to (mail that was done,
    /// or written but never acknowledged). Returns how many.
    pub fn remove_unreferenced(&self) -> usize {
        let mut st = self.state.borrow_mut();
        let unused: Vec<u32> = st
            .files
            .iter()
            .filter(|(_, f)| f.refs == 0)
            .map(|(s, _)| *s)
            .collect();
        for seq in &unused {
            self.unlink_if_unused(&mut st, *seq);
        }
        unused.len()
    }

    /// Reads a body and checks its CRC. Blocking read of page-cache or disk
    /// (used by recovery, the CLI and tests; delivery reads asynchronously).
    pub fn read_blocking(&self, r: &BodyRef) -> io::Result<Vec<u8>> {
        let file = {
            let st = self.state.borrow();
            st.files
                .get(&r.segment)
                .map(|f| f.file.clone())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("segment {} missing", r.segment),
                    )
                })?
        };
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.offset)?;
        check_crc(r, buf)
    }

    /// Reads a body through io_uring and checks its CRC.
    pub async fn read(&self, r: &BodyRef) -> io::Result<Vec<u8>> {
        let uring = {
            let st = self.state.borrow();
            let seg = st.files.get(&r.segment).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("segment {} missing", r.segment),
                )
            })?;
            seg.uring.clone()
        };
        match uring {
            Some(u) => {
                let got = u.read_at(r.offset, r.len as usize).await?;
                check_crc(r, got.to_vec())
            }
            None => self.read_blocking(r),
        }
    }

    /// Whatever of a body is still readable (for quarantine): at most
    /// `len` bytes from `offset`, fewer if the segment is short.
    pub fn read_available(&self, r: &BodyRef) -> Vec<u8> {
        let st = self.state.borrow();
        let Some(seg) = st.files.get(&r.segment) else {
            return Vec::new();
        };
        let size = seg.file.metadata().map_or(0, |m| m.len());
        let n = size.saturating_sub(r.offset).min(r.len) as usize;
        let mut buf = vec![0u8; n];
        match seg.file.read_exact_at(&mut buf, r.offset) {
            Ok(()) => buf,
            Err(_) => Vec::new(),
        }
    }

    /// Segment files on disk now.
    pub fn count(&self) -> usize {
        self.state.borrow().files.len()
    }
}

fn check_crc(r: &BodyRef, buf: Vec<u8>) -> io::Result<Vec<u8>> {
    if buf.len() as u64 != r.len || crc32fast::hash(&buf) != r.crc32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "body in segment {} at {} fails its CRC",
                r.segment, r.offset
            ),
        ));
    }
    Ok(buf)
}
