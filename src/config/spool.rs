//! `[spool]`: where and how messages are stored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problems;

/// Where a group-commit round runs its fdatasync (`spool.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// On the shard's own thread: the shard waits for the disk, and
    /// nothing is handed to another thread and back.
    #[default]
    Inline,
    /// Through io_uring (an io-wq worker): the shard keeps serving other
    /// sessions while the disk works, and rounds overlap.
    IoUring,
}

section! {
    /// Where and how messages are stored. Keep the spool on a journaling
    /// file system (ext4 with its journal, XFS): without a journal, ext4's
    /// fdatasync also writes the inode whenever its time stamp moves.
    SpoolConfig = "spool" {
        /// Spool directory. Holds `shard-N/queue` (sled: envelopes,
        /// quarantine) and `shard-N/segments` (message bodies).
        dir: PathBuf = PathBuf::from("./ringpost-spool"),
        /// sled page cache per shard, in bytes. sled holds more than this
        /// in memory: about 1.3 times, measured with a million queued.
        cache_bytes: u64 = 32 << 20,
        /// Size of one body segment file (1 MiB to 1 GiB). Disk space comes
        /// back a segment at a time, when its last message is done. A
        /// finished segment's file is kept
        /// (one per shard) to become the next segment. A body larger than
        /// this gets a segment of its own.
        segment_bytes: u64 = 16 << 20,
        /// Where a group-commit round runs its fdatasync. `"inline"`: on
        /// the shard's own thread, which waits for the disk; the least
        /// latency and CPU when fdatasync is fast (SSD, NVMe, a VM disk with
        /// a write cache). `"io_uring"`: through an io_uring worker, up to
        /// two rounds at once, while the shard keeps serving its other
        /// sessions; choose it when fdatasync is slow (spinning or network
        /// disks). Either way the 250 comes only after the fdatasync.
        sync: SyncMode = SyncMode::Inline,
        /// Free space the spool's file system keeps in reserve, in bytes:
        /// below it, reception stops (`452 4.3.1 Insufficient system
        /// storage`, HTTP `507`) until space comes back, so that removals,
        /// state changes, the admin's deletes and recovery always have room.
        /// At least twice `segment_bytes` (the next segment is made ahead);
        /// better a few times `smtp.max_message_size` too. `0`: no reserve,
        /// not recommended: when the disk fills, the queue index (sled)
        /// fails for good after its first failed write, and the shard
        /// refuses mail (451) until a restart with free space.
        min_free_bytes: u64 = 160 << 20,
        /// Compaction: a full segment whose queued bodies take less than
        /// this percentage of it, for at least 30 s, has them copied into
        /// the segment being written (durably, through the group commit,
        /// then the queue index repointed), so that its space comes back
        /// although some of its mail waits for days (deferrals). Paced: a
        /// few MiB per second per shard. `0`: no compaction.
        compact_below_percent: u64 = 50,
    }
}

impl SpoolConfig {
    pub fn check(&self, p: &mut Problems) {
        if self.dir.as_os_str().is_empty() {
            p.at("spool.dir", "must not be empty");
        }
        if !(1 << 20..=1 << 30).contains(&self.segment_bytes) {
            p.at("spool.segment_bytes", "must be between 1 MiB and 1 GiB");
        }
        if self.compact_below_percent > 90 {
            p.at("spool.compact_below_percent", "must be at most 90");
        }
        if self.min_free_bytes > 0 && self.min_free_bytes < 2 * self.segment_bytes {
            p.at(
                "spool.min_free_bytes",
                "must be 0 or at least twice segment_bytes (the next segment is made ahead)",
            );
        }
    }
}
