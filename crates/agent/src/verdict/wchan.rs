//! What a thread in D waits on, from its wait channel (the kernel function that called
//! `schedule`, `/proc/<pid>/task/<tid>/wchan`).
//!
//! The lists are the waits of the stories: direct and queued device I/O; page writeback and
//! journal commits (an `fsync` behind a flush); and sleeping locks (the `s_umount` rwsem an
//! overlay unmount waits on behind another mount's `syncfs`). Page-lock waits
//! (`folio_wait_bit_common`, `__lock_page`) wait for a read to finish: device I/O, not a lock.
//! A bare `folio_wait_bit` is a writeback wait: on 6.18 `folio_wait_writeback` reaches the
//! inlined `folio_wait_bit_common` through it, so an `fsync` behind a flush shows exactly
//! `folio_wait_bit` (measured on the e2e flush scenario), while readers waiting for a page
//! show `folio_wait_bit_common` or `__folio_lock`.

/// The kind of wait a wait channel names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitKind {
    /// Waiting for a device to complete I/O (or for a tag or budget of its queue).
    Device,
    /// Waiting for dirty data to be written back, or for a journal commit.
    Writeback,
    /// Waiting for a sleeping lock (rwsem, mutex, semaphore).
    Lock,
    /// Anything else, or unknown.
    Other,
}

const WRITEBACK: &[&str] = &[
    "folio_wait_writeback",
    "wait_on_page_writeback",
    "filemap_fdatawait",
    "__filemap_fdatawait_range",
    "file_write_and_wait_range",
    "filemap_write_and_wait_range",
    "balance_dirty_pages",
    "wb_wait_for_completion",
    "sync_inodes_sb",
    "sync_inodes_one_sb",
    "writeback_sb_inodes",
    "jbd2_log_wait_commit",
    "jbd2_journal_wait_updates",
    "xfs_log_force",
    "xfs_log_force_seq",
    "xlog_wait",
    "ext4_sync_file",
    "sync_filesystem",
];

const LOCK: &[&str] = &[
    "rwsem",
    "mutex",
    "down_read",
    "down_write",
    "super_lock",
    "percpu",
];

const DEVICE: &[&str] = &[
    "io_schedule",
    "blk_mq_get_tag",
    "rq_qos_wait",
    "wbt_wait",
    "submit_bio_wait",
    "blk_queue_enter",
    "bio_queue_enter",
    "blkdev_direct",
    "iomap_dio",
    "bit_wait_io",
    "folio_wait_bit",
    "lock_page",
    "folio_lock",
    "blk_throtl",
    "throtl",
    // Metadata reads through buffer heads: what a lookup or an allocation waits in on a hung
    // ext4 (measured on the e2e hung-disk rig: a cold lookup in `__ext4_find_entry`,
    // ext4lazyinit in `ext4_read_block_bitmap_nowait`).
    "ext4_find_entry",
    "ext4_read_block_bitmap",
    "ext4_read_inode_bitmap",
    "ext4_get_inode_loc",
    "wait_on_buffer",
    "__lock_buffer",
];

impl WaitKind {
    pub fn of(wchan: Option<&str>) -> WaitKind {
        let Some(w) = wchan else {
            return WaitKind::Other;
        };
        // Writeback first: `wb_wait_for_completion` must not count as a device wait.
        if w == "folio_wait_bit" || WRITEBACK.iter().any(|p| w.starts_with(p) || w.contains(p)) {
            WaitKind::Writeback
        } else if LOCK.iter().any(|p| w.contains(p)) || w == "__down" || w.starts_with("__down_") {
            WaitKind::Lock
        } else if DEVICE.iter().any(|p| w.contains(p)) {
            WaitKind::Device
        } else {
            WaitKind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_of_the_stories() {
        for (w, k) in [
            ("io_schedule", WaitKind::Device),
            ("blk_mq_get_tag", WaitKind::Device),
            ("folio_wait_bit_common", WaitKind::Device),
            ("folio_wait_bit", WaitKind::Writeback),
            ("__folio_lock", WaitKind::Device),
            ("__ext4_find_entry", WaitKind::Device),
            ("ext4_read_block_bitmap_nowait", WaitKind::Device),
            ("__wait_on_buffer", WaitKind::Device),
            ("folio_wait_writeback", WaitKind::Writeback),
            ("jbd2_log_wait_commit", WaitKind::Writeback),
            ("wb_wait_for_completion", WaitKind::Writeback),
            ("rwsem_down_write_slowpath", WaitKind::Lock),
            ("rwsem_down_read_slowpath", WaitKind::Lock),
            ("__mutex_lock", WaitKind::Lock),
            ("__down_common", WaitKind::Lock),
            ("percpu_rwsem_wait", WaitKind::Lock),
            ("do_select", WaitKind::Other),
        ] {
            assert_eq!(WaitKind::of(Some(w)), k, "{w}");
        }
        assert_eq!(WaitKind::of(None), WaitKind::Other);
    }
}
