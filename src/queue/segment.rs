//! Message bodies in append-only segment files, one active segment per shard.
//!
//! Owns: [`Segments`]: appending a *frame* (a message's queue record and its
//! body) and returning where the body is ([`BodyRef`]), reading a body back
//! (checked against its CRC-32), replaying frames at recovery, counting
//! references per segment, and unlinking a segment once it is sealed and
//! nothing refers to it. Files live in `shard-k/segments/NNNNNNNNNN.seg`.
//!
//! A segment is also the spool's journal: a sequence of frames
//! ([`super::frame`]).
//!
//! One fdatasync of the
//! segment makes a whole group-commit round of frames durable, so sled need
//! not be flushed before the 250: recovery replays the frames that sled had
//! not yet persisted (see `queue::commit`). Frames are only ever read back
//! in sequence from a known frame boundary, never by searching, so a body
//! can never be mistaken for a frame.
//!
//! Why segments: a file per message needs one fsync per message, and ext4
//! serialises the journal commits that new files force, whatever the
//! number of threads; writing into a preallocated segment and issuing *one*
//! fdatasync per group-commit round is an order of magnitude faster
//! (benches/results/README.md has the numbers). sled itself is not used for
//! bodies because it writes large values as blob files it never frees.
//! Here space comes back whole, segment by segment, when the last message
//! in a segment is done.
//!
//! Segment files are recycled, as PostgreSQL recycles WAL segments: a
//! segment whose last message is done becomes the spare for the next one
//! instead of being unlinked. Its blocks are allocated and written, so
//! fdatasyncs into it flush only data; no 16 MiB of zeros is written (and
//! synced, competing with the commit rounds' fdatasyncs and showing in the
//! acceptance latency's tail), and no discard of the freed blocks stalls
//! the disk. Zero-filled spares are made only when none can be recycled (at
//! start, and while the queue grows), and at most every few seconds.
//!
//! Known cost: one long-deferred message keeps its whole segment on disk.
//! `segment_bytes` bounds that waste per pinned segment.
//!
//! Concurrency: lives on its shard's executor (`RefCell`, not shared).
//! Frames are written with pwritev into the page cache at offsets reserved
//! synchronously (see [`Segments::write`] for why not io_uring); the
//! group-commit round fdatasyncs them, on the shard's thread or through
//! io_uring (`spool.sync`, see `queue::commit`). Deliveries read
//! bodies from the page cache with a non-blocking preadv2, and through
//! io_uring (glommio `BufferedFile`) when that would wait for the disk.
//!
//! Must not: decide durability. A body is durable only after the commit
//! round that synced its segment; `queue::commit` owns that order.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::io::BufferedFile;

use super::frame::{BodyRef, FRAME_HEADER, Frame, ReplayedFrame, frame_is_current, frame_lengths};
use super::spare::{allocate, keep_spare, zero_filled};

struct SegmentFile {
    /// For fdatasync and reads; shared with the blocking thread.
    file: Arc<File>,
    /// For the commit rounds' fdatasync (inline on its descriptor, or
    /// through io_uring) and io_uring reads; created on first append
    /// (needs an executor).
    uring: Option<Rc<BufferedFile>>,
    /// Bodies reserved in this segment and not yet released.
    refs: u64,
    /// Bytes of those bodies: what compaction would have to move.
    live: u64,
    /// The file's size (its capacity while it is active).
    capacity: u64,
    /// Since when appends go elsewhere (None while active).
    sealed_at: Option<Instant>,
}

impl SegmentFile {
    fn new(file: File, capacity: u64, sealed_at: Option<Instant>) -> SegmentFile {
        SegmentFile {
            file: Arc::new(file),
            uring: None,
            refs: 0,
            live: 0,
            capacity,
            sealed_at,
        }
    }
}

struct SegmentTable {
    files: BTreeMap<u32, SegmentFile>,
    /// The segment appends go to, with its capacity and next free offset.
    active: Option<(u32, u64, u64)>,
    /// Segments no longer referenced, to be unlinked once sled has been
    /// flushed (their records' removals must be durable first).
    doomed: Vec<u32>,
    /// A segment was created since the last round: the directory needs a sync.
    dir_changed: bool,
    /// A file ready to become the next segment.
    spare: Option<Spare>,
    /// A zero-filled spare is being written on the blocking thread.
    preparing: bool,
    /// When the last zero-filled spare was begun (see `prepare_spare`).
    last_zero_fill: Option<Instant>,
    /// The number the next segment gets. Numbers are never reused within a
    /// run, so a recycled file's old frames never name its new number.
    next_seq: u32,
    /// Segments created in this run, at the regular size: their frames
    /// all name their segment, so their files may be recycled.
    recyclable: BTreeSet<u32>,
}

/// A file ready to become the next segment, and its name meanwhile.
struct Spare {
    file: File,
    name: &'static str,
}

/// Zero-filled spares are begun at most this often. When segments fill
/// faster (a backlog of big messages: nothing to recycle, and writing 16
/// MiB of zeros every quarter second costs the shard real CPU) the next
/// segment is preallocated instead, and its fdatasyncs pay for the extent
/// conversion, a little slower each.
const ZERO_FILL_INTERVAL: Duration = Duration::from_secs(5);

/// A zero-filled spare's name while it is prepared or waits for its turn.
const SPARE_NAME: &str = "spare.tmp";
/// A finished segment's file waiting to be the next segment. Removed at
/// start-up: numbering restarts after the highest segment on disk, so its
/// old frames could name a number the new run gives out.
const RECYCLED_NAME: &str = "recycled.tmp";

pub struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    state: RefCell<SegmentTable>,
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
        let mut spare = None;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let seq = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            if entry.file_name() == SPARE_NAME {
                // Complete (zeros to the full size): kept for the next
                // segment. Half-written: made again.
                spare = keep_spare(&entry.path(), segment_bytes)?;
                continue;
            }
            if entry.file_name() == RECYCLED_NAME {
                fs::remove_file(entry.path())?;
                continue;
            }
            match seq {
                Some(seq) => {
                    let file = File::options().read(true).write(true).open(entry.path())?;
                    let meta = file.metadata()?;
                    // Appends go to new segments: every one found is sealed,
                    // at its last write (so that a process restarted again
                    // and again still lets old segments settle and be
                    // compacted; a clock step back only makes it "now").
                    let written_ago = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let now = Instant::now();
                    let sealed_at = now.checked_sub(written_ago).unwrap_or(now);
                    let segment = SegmentFile::new(file, meta.len(), Some(sealed_at));
                    files.insert(seq, segment);
                }
                None => log::warn!("spool: ignoring stray file {:?}", entry.path()),
            }
        }
        let next_seq = files.keys().next_back().map_or(1, |s| s + 1);
        Ok(Segments {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: RefCell::new(SegmentTable {
                files,
                active: None,
                doomed: Vec::new(),
                dir_changed: false,
                spare: spare.map(|file| Spare {
                    file,
                    name: SPARE_NAME,
                }),
                preparing: false,
                last_zero_fill: None,
                next_seq,
                recyclable: BTreeSet::new(),
            }),
        })
    }

    /// Reserves room for `frame` (synchronously, so reservations are in
    /// offset order) and returns where its body will be, and the write to
    /// run. The write returns once the bytes are written (not yet synced).
    pub fn reserve_frame(&self, mut frame: Frame) -> io::Result<(BodyRef, PendingWrite)> {
        let (segment, offset, file) = self.reserve(frame.len(), frame.body.len() as u64)?;
        frame.seal(segment);
        Ok((
            frame.body_ref(segment, offset),
            PendingWrite {
                segment,
                offset,
                file,
                head: frame.head,
                body: frame.body,
            },
        ))
    }

    /// Runs a reserved write. On error the caller releases the body and
    /// seals the segment (see `queue::commit`).
    ///
    /// The write is a plain pwritev into the page cache, on the shard's
    /// thread: for a frame of a few KiB that is a few microseconds, less than
    /// io_uring's hand-off of a buffered write to an io-wq worker and back.
    /// Durability comes from the round's fdatasync.
    pub async fn write(&self, w: PendingWrite) -> io::Result<()> {
        write_all_vectored_at(&w.file, [&w.head, &w.body], w.offset)
    }

    /// Unmakes a frame whose message was refused after its write (its
    /// commit failed): its magic is overwritten with zeros and the segment
    /// synced, so that replay stops there and never brings back a message
    /// whose client was told no. Replay stops at the first frame that is not
    /// whole, and every later frame of the segment failed with this one
    /// (the segment is sealed), so nothing acknowledged is lost by it. The
    /// bytes are written over blocks the frame already has: this needs no
    /// free space.
    pub fn void(&self, segment: u32, frame_offset: u64) -> io::Result<()> {
        let file = self
            .state
            .borrow()
            .files
            .get(&segment)
            .map(|f| f.file.clone());
        let Some(file) = file else {
            return Ok(());
        };
        file.write_all_at(&[0; 4], frame_offset)?;
        file.sync_data()
    }

    /// Stops appending to `segment` after a failed write or sync (frames
    /// after a hole could not be replayed), and keeps its file from being
    /// recycled.
    pub fn seal(&self, segment: u32) {
        let mut st = self.state.borrow_mut();
        // A file a write or an fdatasync failed on is not reused: unlinked
        // once its messages are done.
        st.recyclable.remove(&segment);
        if st.active.is_some_and(|(s, _, _)| s == segment) {
            st.active = None;
            self.unlink_if_unused(&mut st, segment);
        }
    }

    /// Picks the offset for `len` bytes, rotating to a new segment when the
    /// active one is full. Synchronous, so concurrent appends never overlap.
    fn reserve(&self, len: u64, body_len: u64) -> io::Result<(u32, u64, Arc<File>)> {
        let mut st = self.state.borrow_mut();
        let fits = matches!(st.active, Some((_, cap, next)) if next + len <= cap);
        if !fits {
            self.rotate(&mut st, len)?;
        }
        let (seq, cap, next) = st.active.expect("rotate sets it");
        st.active = Some((seq, cap, next + len));
        let seg = st.files.get_mut(&seq).expect("active segment is open");
        seg.refs += 1;
        seg.live += body_len;
        if seg.uring.is_none() {
            let fd = seg.file.try_clone()?.into_raw_fd();
            // SAFETY: `fd` is a fresh duplicate we own; BufferedFile closes it.
            seg.uring = Some(Rc::new(unsafe { BufferedFile::from_raw_fd(fd) }));
        }
        Ok((seq, next, seg.file.clone()))
    }

    /// Seals the active segment and starts the next one: the spare if one
    /// is ready, else a preallocated file (rare: once per `segment_bytes`
    /// of mail, so done inline).
    fn rotate(&self, st: &mut SegmentTable, len: u64) -> io::Result<()> {
        let old = st.active.take().map(|(seq, _, _)| seq);
        let seq = st.next_seq;
        st.next_seq += 1;
        let cap = self.segment_bytes.max(len);
        let path = segment_path(&self.dir, seq);
        let file = match st.spare.take_if(|_| cap == self.segment_bytes) {
            Some(spare) => {
                fs::rename(self.dir.join(spare.name), &path)?;
                spare.file
            }
            None => allocate(&path, cap)?,
        };
        if cap == self.segment_bytes {
            st.recyclable.insert(seq);
        }
        st.files.insert(seq, SegmentFile::new(file, cap, None));
        st.active = Some((seq, cap, 0));
        st.dir_changed = true;
        if let Some(old) = old {
            if let Some(f) = st.files.get_mut(&old) {
                f.sealed_at = Some(Instant::now());
            }
            self.unlink_if_unused(st, old);
        }
        Ok(())
    }

    /// Starts writing the next segment's zeros ahead of time, if no spare
    /// is ready or under way and the active segment is half full: by then
    /// the segment before it has usually been recycled, unless the queue is
    /// growing.
    ///
    /// Why zeros: fallocate leaves *unwritten* extents, and the first write
    /// into one changes metadata, so every fdatasync then also writes
    /// metadata (under load the mean commit round was ~1 ms with
    /// fallocated segments, session 2). In a file whose blocks were written
    /// once, fdatasync only flushes data. Writing 16 MiB of zeros costs a
    /// few ms on the blocking thread once per segment; it saves that
    /// metadata write in every round.
    pub fn prepare_spare(self: &Rc<Self>) {
        {
            let mut st = self.state.borrow_mut();
            // Called for every frame: the clock is read only when the rest
            // would let a zero-fill begin.
            let half_full = st.active.is_some_and(|(_, cap, next)| next >= cap / 2);
            if st.spare.is_some()
                || st.preparing
                || !half_full
                || st
                    .last_zero_fill
                    .is_some_and(|t| t.elapsed() < ZERO_FILL_INTERVAL)
            {
                return;
            }
            st.preparing = true;
            st.last_zero_fill = Some(Instant::now());
        }
        let me = self.clone();
        let (path, size) = (self.dir.join(SPARE_NAME), self.segment_bytes);
        glommio::spawn_local(async move {
            let made = glommio::executor()
                .spawn_blocking(move || zero_filled(&path, size))
                .await;
            let mut st = me.state.borrow_mut();
            st.preparing = false;
            match made {
                Ok(file) => {
                    st.spare = Some(Spare {
                        file,
                        name: SPARE_NAME,
                    })
                }
                Err(e) => log::warn!("spool: cannot prepare a segment ahead: {e}"),
            }
        })
        .detach();
    }

    /// Makes sure a spare is ready before the shard serves (blocking,
    /// start-up only), so that the first segment after a start is also
    /// zero-filled: mail that fits in one segment, as in a short burst,
    /// would otherwise pay the metadata sync in every round.
    pub fn ready_spare(&self) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        if st.spare.is_none() {
            st.spare = Some(Spare {
                file: zero_filled(&self.dir.join(SPARE_NAME), self.segment_bytes)?,
                name: SPARE_NAME,
            });
        }
        Ok(())
    }

    /// Whether a spare is being written (a stopping shard waits for it).
    pub fn preparing(&self) -> bool {
        self.state.borrow().preparing
    }

    /// What a commit round of frames in `segments` must sync: their files,
    /// and whether the directory gained a segment since the last call (its
    /// name is durable only once the directory is synced).
    /// Segments are synced through their `BufferedFile`, which every
    /// segment gets when its first frame is reserved (inline on its
    /// descriptor, or as an io_uring fdatasync: `spool.sync`). A segment
    /// holding a frame is referenced, so it is still open.
    pub fn sync_handles(&self, segments: &[u32]) -> (Vec<Rc<BufferedFile>>, bool) {
        let mut st = self.state.borrow_mut();
        let files = segments
            .iter()
            .filter_map(|s| st.files.get(s).and_then(|f| f.uring.clone()))
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
            seg.live = seg.live.saturating_sub(r.len);
        }
        self.unlink_if_unused(&mut st, r.segment);
    }

    /// Segments worth compacting: sealed for at least `settle`, and with
    /// live bodies under `percent` of their size (see `Spool::relocate`).
    pub fn sparse(&self, percent: u64, settle: Duration) -> Vec<u32> {
        let st = self.state.borrow();
        let active = st.active.map(|(s, _, _)| s);
        st.files
            .iter()
            .filter(|(seq, f)| {
                Some(**seq) != active
                    && f.refs > 0
                    && f.sealed_at.is_some_and(|t| t.elapsed() >= settle)
                    && f.live.saturating_mul(100) < f.capacity.saturating_mul(percent)
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// A sealed segment nobody refers to is closed and doomed: unlinked by
    /// [`Segments::unlink_doomed`] after the next sled flush.
    fn unlink_if_unused(&self, st: &mut SegmentTable, seq: u32) {
        let active = st.active.map(|(s, _, _)| s);
        let unused = st.files.get(&seq).is_some_and(|f| f.refs == 0);
        if unused && active != Some(seq) {
            st.files.remove(&seq);
            st.doomed.push(seq);
        }
    }

    /// Whether a doomed segment could become the spare that is missing:
    /// the spool then flushes at once instead of at the next interval, so
    /// that the file is recycled before a zero-filled spare is begun.
    pub fn recycle_waiting(&self) -> bool {
        let st = self.state.borrow();
        st.spare.is_none()
            && !st.preparing
            && st.doomed.iter().any(|seq| st.recyclable.contains(seq))
    }

    /// Segments doomed so far; pass them to [`Segments::unlink_doomed`]
    /// once a sled flush that began after this call is done.
    pub fn take_doomed(&self) -> Vec<u32> {
        std::mem::take(&mut self.state.borrow_mut().doomed)
    }

    /// Unlinks doomed segments, or keeps one's file as the next spare.
    pub fn unlink_doomed(&self, doomed: &[u32]) {
        for seq in doomed {
            let path = segment_path(&self.dir, *seq);
            if self.recycle(*seq, &path) {
                continue;
            }
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("spool: cannot remove segment {seq}: {e}");
            }
        }
    }

    /// Renames a doomed segment's file to be the next spare, if it may be
    /// recycled and no spare is ready or being made.
    fn recycle(&self, seq: u32, path: &Path) -> bool {
        let mut st = self.state.borrow_mut();
        if !st.recyclable.remove(&seq) || st.spare.is_some() || st.preparing {
            return false;
        }
        let spare = File::options()
            .read(true)
            .write(true)
            .open(path)
            .and_then(|file| fs::rename(path, self.dir.join(RECYCLED_NAME)).map(|()| file));
        match spare {
            Ok(file) => {
                st.spare = Some(Spare {
                    file,
                    name: RECYCLED_NAME,
                });
                true
            }
            Err(e) => {
                log::warn!("spool: cannot recycle segment {seq}: {e}");
                false
            }
        }
    }

    /// Recovery: the frames of `segment` from offset `from` up to the first
    /// spot that is not a whole, intact frame (the unwritten rest of a
    /// preallocated segment, or a write a crash cut short).
    pub fn replay(&self, segment: u32, from: u64) -> Vec<ReplayedFrame> {
        let st = self.state.borrow();
        let Some(seg) = st.files.get(&segment) else {
            return Vec::new();
        };
        let size = seg.file.metadata().map_or(0, |m| m.len());
        let mut frames = Vec::new();
        let mut at = from;
        let mut header = [0u8; FRAME_HEADER as usize];
        while at + FRAME_HEADER <= size && seg.file.read_exact_at(&mut header, at).is_ok() {
            let Some((record_len, body_len)) = frame_lengths(&header, size - at) else {
                break;
            };
            let mut frame = vec![0u8; (FRAME_HEADER + record_len + body_len) as usize];
            if seg.file.read_exact_at(&mut frame, at).is_err() || !frame_is_current(&frame, segment)
            {
                break;
            }
            let body = &frame[(FRAME_HEADER + record_len) as usize..];
            let end = at + frame.len() as u64;
            frames.push(ReplayedFrame {
                id: frame[24..40].try_into().expect("16 bytes"),
                record: frame[FRAME_HEADER as usize..(FRAME_HEADER + record_len) as usize].to_vec(),
                body: BodyRef {
                    segment,
                    offset: at + FRAME_HEADER + record_len,
                    len: body_len,
                    crc32: crc32fast::hash(body),
                },
                end,
            });
            at = end;
        }
        frames
    }

    /// Segment numbers on disk, in order.
    pub fn sequence_numbers(&self) -> Vec<u32> {
        self.state.borrow().files.keys().copied().collect()
    }

    /// Recovery: counts a reference found in a queue record, after checking
    /// that the segment exists and holds the whole body. Recovery comes
    /// before any append (`ready_for_appends`), so a segment's size is
    /// still the one it had at open (`capacity`): no system call per
    /// message.
    pub fn adopt(&self, r: &BodyRef) -> Result<(), String> {
        let mut st = self.state.borrow_mut();
        let seg = st
            .files
            .get_mut(&r.segment)
            .ok_or_else(|| format!("segment {} is missing", r.segment))?;
        let size = seg.capacity;
        if r.offset.checked_add(r.len).is_none_or(|end| end > size) {
            return Err(format!(
                "segment {} has {size} bytes, body needs {}+{}",
                r.segment, r.offset, r.len
            ));
        }
        seg.refs += 1;
        seg.live += r.len;
        Ok(())
    }

    /// Recovery: unlinks segments no record refers to (mail that was done,
    /// or written but never acknowledged). Returns them. The caller has
    /// flushed sled first.
    pub fn remove_unreferenced(&self) -> Vec<u32> {
        let unused: Vec<u32> = {
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
            unused
        };
        let doomed = self.take_doomed();
        self.unlink_doomed(&doomed);
        unused
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

    /// Reads a body and checks its CRC. The returned vector has room for a
    /// few more bytes (the DATA terminator, `proto::body::dot_stuff`).
    ///
    /// A body just queued is in the page cache: it is copied straight into
    /// the vector on the shard's thread (preadv2 with RWF_NOWAIT, which
    /// never waits for the disk). Only when that would block does the read
    /// go through io_uring, and then its buffer is copied once more.
    pub async fn read(&self, r: &BodyRef) -> io::Result<Vec<u8>> {
        let (file, uring) = {
            let st = self.state.borrow();
            let seg = st.files.get(&r.segment).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("segment {} missing", r.segment),
                )
            })?;
            (seg.file.clone(), seg.uring.clone())
        };
        if let Some(body) = read_cached(&file, r) {
            return check_crc(r, body);
        }
        match uring {
            Some(u) => {
                let got = u.read_at(r.offset, r.len as usize).await?;
                let mut body = Vec::with_capacity(got.len() + READ_SLACK);
                body.extend_from_slice(&got);
                check_crc(r, body)
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

/// A reserved frame write (see [`Segments::reserve_frame`]).
pub struct PendingWrite {
    pub segment: u32,
    pub offset: u64,
    file: Arc<File>,
    head: Vec<u8>,
    body: Vec<u8>,
}

/// Room left after a body read for delivery: `.\r\n` and a CRLF before it.
const READ_SLACK: usize = 5;

/// The body at `r` if it is all in the page cache, else None.
fn read_cached(file: &File, r: &BodyRef) -> Option<Vec<u8>> {
    let len = usize::try_from(r.len).ok()?;
    let mut buf: Vec<u8> = Vec::with_capacity(len + READ_SLACK);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: the iovec covers `len` bytes of `buf`'s spare capacity; the
    // kernel writes at most that many, and `set_len` below keeps only the
    // bytes it wrote.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            r.offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    // Short (partly cached) or EAGAIN (not cached): the slow path.
    (usize::try_from(n).ok()? == len).then(|| {
        // SAFETY: the kernel initialised exactly `len` bytes.
        unsafe { buf.set_len(len) };
        buf
    })
}

/// pwritev of `parts` at `offset`, resumed after a short write.
fn write_all_vectored_at(file: &File, parts: [&[u8]; 2], offset: u64) -> io::Result<()> {
    let iov = parts.map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    });
    // SAFETY: the iovecs point into `parts`, which outlive the call; the
    // kernel only reads them.
    let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), 2, offset as libc::off_t) };
    let written = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // Rare (a regular file writes all or fails): finish piece by piece.
    let (mut skip, mut pos) = (written, offset + written as u64);
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        file.write_all_at(&part[skip..], pos)?;
        pos += (part.len() - skip) as u64;
        skip = 0;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_record_and_body_and_check_their_lengths() {
        let mut f = Frame::new(&[9; 16], b"{rec}", b"body bytes".to_vec());
        f.seal(7);
        assert_eq!(f.len(), FRAME_HEADER + 5 + 10);
        let bytes = [f.head.as_slice(), &f.body].concat();
        assert_eq!(frame_lengths(&bytes, f.len()), Some((5, 10)));
        assert_eq!(frame_lengths(&bytes, f.len() - 1), None, "must fit");
        // The combined CRC is the CRC of the frame as written.
        assert!(frame_is_current(&bytes, 7));
        let r = f.body_ref(7, 100);
        assert_eq!(
            (r.segment, r.offset, r.len),
            (7, 100 + FRAME_HEADER + 5, 10)
        );
        assert_eq!(r.crc32, crc32fast::hash(b"body bytes"));
        assert_eq!(frame_lengths(&[0; 40], 1000), None, "zeros are no frame");
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(frame_lengths(&huge, u64::MAX), None, "no overflow");
    }

    fn sealed(segment: u32, body: &[u8]) -> Vec<u8> {
        let mut f = Frame::new(&[3; 16], b"{}", body.to_vec());
        f.seal(segment);
        [f.head.as_slice(), &f.body].concat()
    }

    #[test]
    fn a_frame_from_an_earlier_life_of_the_file_is_not_current() {
        let old = sealed(4, b"delivered long ago");
        assert!(frame_is_current(&old, 4));
        assert!(!frame_is_current(&old, 9), "recycled as segment 9");
        // The segment number is under the CRC: a header torn between two
        // lives does not pass either.
        let mut torn = old.clone();
        torn[20..24].copy_from_slice(&9u32.to_le_bytes());
        assert!(!frame_is_current(&torn, 9));
        let mut flipped = old;
        flipped[50] ^= 1;
        assert!(!frame_is_current(&flipped, 4));
    }

    #[test]
    fn frames_written_before_they_named_their_segment_still_replay() {
        // The old layout: 0 where the segment is, CRC over all but 16..24.
        let mut legacy = sealed(1, b"old body");
        legacy[20..24].copy_from_slice(&[0; 4]);
        let mut h = crc32fast::Hasher::new();
        h.update(&legacy[..16]);
        h.update(&legacy[24..]);
        let crc = h.finalize().to_le_bytes();
        legacy[16..20].copy_from_slice(&crc);
        assert!(frame_is_current(&legacy, 5));
    }

    /// Compaction waits until a segment has settled; that time is the
    /// file's, not the process's, so a server restarted again and again
    /// (a crash loop) still compacts (found by benches/soak.py: with a kill
    /// every few seconds nothing ever settled).
    #[test]
    fn a_segment_found_at_start_up_is_as_old_as_its_last_write() {
        let dir = tempfile::tempdir().unwrap();
        let write = |seq: u32, age: Duration| {
            let f = File::create(dir.path().join(format!("{seq:010}.seg"))).unwrap();
            f.set_len(1 << 20).unwrap();
            f.set_modified(std::time::SystemTime::now() - age).unwrap();
        };
        write(1, Duration::from_secs(600));
        write(2, Duration::ZERO);
        let segments = Segments::open(dir.path(), 1 << 20).unwrap();
        for segment in [1, 2] {
            let r = BodyRef {
                segment,
                offset: 0,
                len: 1000,
                crc32: 0,
            };
            segments.adopt(&r).unwrap();
        }
        assert_eq!(segments.sparse(50, Duration::from_secs(30)), [1]);
    }
}
