//! EBS NVMe detailed performance statistics: the vendor log page 0xD0 that EBS (and EC2
//! instance store) NVMe controllers on Nitro return to an admin Get Log Page command.
//!
//! Sources: AWS "Amazon EBS detailed performance statistics" (the statistic names and units:
//! cumulative counters, times in microseconds, queue length a point-in-time value, read and write
//! latency histograms; at most one request a second is served promptly, more are queued behind
//! other admin commands) and nvme-cli's `plugins/amzn/amzn-nvme.c` (`nvme amzn stats`), whose
//! packed `struct amzn_latency_log_page_base` gives the byte layout, all little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic: 0x3C23B510 EBS, 0xEC2C0D7E instance store |
//! | 4 | 4 | version |
//! | 8 | 8 × 11 | total read ops, write ops, read bytes, write bytes, read time µs, write time µs, EBS volume performance exceeded IOPS µs, … throughput µs, EC2 instance EBS performance exceeded IOPS µs, … throughput µs, volume queue length |
//! | 96 | 416 | reserved |
//! | 512 | 1544 | read latency histogram: u64 number of bins, then 64 × {u64 lower µs, u64 upper µs, u32 count, u32 reserved} |
//! | 2056 | 1544 | write latency histogram, same shape |
//! | 3600 | 4 + 32 | number of per-I/O-size histograms, 8 × u32 I/O sizes (instance store, version 1) |
//! | 3636 | 460 | reserved |
//!
//! 4096 bytes in all. nvme-cli reads those 4096 bytes from namespace 1 for EBS; only instance
//! store (version 1) appends 4096 more bytes of per-I/O-size histograms, which are not read here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Vendor-specific log page identifier of the EC2 NVMe statistics.
pub const LOG_PAGE_ID: u8 = 0xD0;
/// Magic of an EBS volume's page.
pub const EBS_STATS_MAGIC: u32 = 0x3C23_B510;
/// Magic of an EC2 instance-store volume's page (same base layout).
pub const INSTANCE_STORE_STATS_MAGIC: u32 = 0xEC2C_0D7E;
/// Bytes requested and parsed.
pub const LOG_PAGE_LEN: usize = 4096;
/// Histogram bins the layout has room for.
pub const MAX_HISTOGRAM_BINS: usize = 64;

const OFF_COUNTERS: usize = 8;
const OFF_READ_HIST: usize = 512;
const OFF_WRITE_HIST: usize = OFF_READ_HIST + HIST_LEN;
const HIST_LEN: usize = 8 + MAX_HISTOGRAM_BINS * BIN_LEN;
const BIN_LEN: usize = 24;

/// Which kind of device produced the page (told apart by its magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ebs,
    InstanceStore,
}

/// One latency histogram bin: `count` I/Os took between `lower` and `upper` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin {
    pub lower_us: u64,
    pub upper_us: u64,
    pub count: u32,
}

/// A latency histogram as the device reports it (cumulative counts per bin).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Histogram {
    pub bins: Vec<Bin>,
}

impl Histogram {
    /// Sum of all bin counts.
    pub fn total_count(&self) -> u64 {
        self.bins.iter().map(|b| u64::from(b.count)).sum()
    }
}

/// The parsed statistics. Counters are cumulative since the volume was attached; times are in
/// microseconds (`_us`). Each field's AWS statistic name is in its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub source: Source,
    pub version: u32,
    pub total_read_ops: u64,
    pub total_write_ops: u64,
    pub total_read_bytes: u64,
    pub total_write_bytes: u64,
    /// `total_read_time`: µs spent by all completed reads.
    pub total_read_time_us: u64,
    /// `total_write_time`: µs spent by all completed writes.
    pub total_write_time_us: u64,
    /// `ebs_volume_performance_exceeded_iops`: µs during which IOPS demand exceeded the
    /// volume's provisioned IOPS.
    pub volume_exceeded_iops_us: u64,
    /// `ebs_volume_performance_exceeded_tp`: µs during which throughput demand exceeded the
    /// volume's provisioned throughput.
    pub volume_exceeded_tp_us: u64,
    /// `ec2_instance_ebs_performance_exceeded_iops`: µs during which EBS IOPS demand exceeded
    /// the instance's maximum (instance store: its local-storage maximum).
    pub ec2_instance_exceeded_iops_us: u64,
    /// `ec2_instance_ebs_performance_exceeded_tp`: µs during which EBS throughput demand
    /// exceeded the instance's maximum.
    pub ec2_instance_exceeded_tp_us: u64,
    /// `volume_queue_length`: read and write operations waiting, at the time of the read (a
    /// gauge, not a counter).
    pub volume_queue_length: u64,
    pub read_io_latency_histogram: Histogram,
    pub write_io_latency_histogram: Histogram,
}

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("NVMe log page 0xD0: {len} bytes, need {LOG_PAGE_LEN}")]
    Short { len: usize },
    #[error(
        "NVMe log page 0xD0: magic {found:#010x} is neither EBS ({EBS_STATS_MAGIC:#010x}) nor \
         instance store ({INSTANCE_STORE_STATS_MAGIC:#010x}): not an EC2 NVMe device"
    )]
    Magic { found: u32 },
    #[error("NVMe log page 0xD0: {which} latency histogram claims {bins} bins, room for {MAX_HISTOGRAM_BINS}")]
    Bins { which: &'static str, bins: u64 },
    #[error("opening {path}: {source}", path = path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a block or character device", path = path.display())]
    NotADevice { path: PathBuf },
    #[error("NVMe admin Get Log Page 0xD0 on {path}: {source}", path = path.display())]
    Ioctl { path: PathBuf, source: io::Error },
    #[error("NVMe admin Get Log Page 0xD0 on {path}: controller status {status:#x}", path = path.display())]
    Status { path: PathBuf, status: i32 },
}

fn u32_at(page: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&page[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(page: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[off..off + 8]);
    u64::from_le_bytes(b)
}

fn histogram(page: &[u8], off: usize, which: &'static str) -> Result<Histogram, NvmeError> {
    let n = u64_at(page, off);
    if n > MAX_HISTOGRAM_BINS as u64 {
        return Err(NvmeError::Bins { which, bins: n });
    }
    let bins = (0..n as usize)
        .map(|i| {
            let b = off + 8 + i * BIN_LEN;
            Bin {
                lower_us: u64_at(page, b),
                upper_us: u64_at(page, b + 8),
                count: u32_at(page, b + 16),
            }
        })
        .collect();
    Ok(Histogram { bins })
}

/// Parses a log page 0xD0 (at least 4096 bytes; bytes beyond are ignored).
pub fn parse(page: &[u8]) -> Result<Stats, NvmeError> {
    if page.len() < LOG_PAGE_LEN {
        return Err(NvmeError::Short { len: page.len() });
    }
    let source = match u32_at(page, 0) {
        EBS_STATS_MAGIC => Source::Ebs,
        INSTANCE_STORE_STATS_MAGIC => Source::InstanceStore,
        found => return Err(NvmeError::Magic { found }),
    };
    let c = |i: usize| u64_at(page, OFF_COUNTERS + 8 * i);
    Ok(Stats {
        source,
        version: u32_at(page, 4),
        total_read_ops: c(0),
        total_write_ops: c(1),
        total_read_bytes: c(2),
        total_write_bytes: c(3),
        total_read_time_us: c(4),
        total_write_time_us: c(5),
        volume_exceeded_iops_us: c(6),
        volume_exceeded_tp_us: c(7),
        ec2_instance_exceeded_iops_us: c(8),
        ec2_instance_exceeded_tp_us: c(9),
        volume_queue_length: c(10),
        read_io_latency_histogram: histogram(page, OFF_READ_HIST, "read")?,
        write_io_latency_histogram: histogram(page, OFF_WRITE_HIST, "write")?,
    })
}

/// `struct nvme_passthru_cmd` (alias `nvme_admin_cmd`) from `<linux/nvme_ioctl.h>`: 72 bytes,
/// `addr` at 24, `cdw10` at 40 (checked against the header with a C compiler and in the tests;
/// the libc crate has no NVMe bindings).
#[repr(C)]
#[derive(Debug, Default)]
struct NvmePassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// `_IOWR(type, nr, size)` in the asm-generic encoding used by x86, x86-64 and arm64 (every
/// EC2 architecture): direction read|write (3) in bits 30–31, size in 16–29, type 8–15, nr 0–7.
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `NVME_IOCTL_ADMIN_CMD = _IOWR('N', 0x41, struct nvme_admin_cmd)` = 0xC0484E41.
const NVME_IOCTL_ADMIN_CMD: u32 = iowr(b'N', 0x41, std::mem::size_of::<NvmePassthruCmd>());
/// NVMe admin opcode Get Log Page.
const NVME_ADMIN_GET_LOG_PAGE: u8 = 0x02;
/// Namespace the AWS tooling (nvme-cli `amzn stats`) addresses for EBS.
const EBS_NSID: u32 = 1;

/// The Get Log Page command for page 0xD0, 4096 bytes into `addr`: cdw10 holds the page id in
/// bits 0–7 and the 0's-based number of dwords (NUMDL) in bits 16–31.
fn get_log_page_cmd(addr: u64) -> NvmePassthruCmd {
    let numd = (LOG_PAGE_LEN / 4) as u32;
    NvmePassthruCmd {
        opcode: NVME_ADMIN_GET_LOG_PAGE,
        nsid: EBS_NSID,
        addr,
        data_len: LOG_PAGE_LEN as u32,
        cdw10: ((numd - 1) << 16) | u32::from(LOG_PAGE_ID),
        ..Default::default()
    }
}

/// A page-aligned buffer for the device to DMA into (the kernel copies through a bounce buffer
/// if needed, but aligned is what nvme-cli hands it too).
#[repr(C, align(4096))]
struct Page([u8; LOG_PAGE_LEN]);

/// Reads and parses log page 0xD0 from an NVMe controller (`/dev/nvme1`) or namespace
/// (`/dev/nvme1n1`) device, opened read-only.
///
/// Needs CAP_SYS_ADMIN (the kernel checks it for admin passthrough). The ioctl blocks until the
/// controller answers or the kernel's admin timeout (default 60 s) expires, so call it off the
/// sampling thread, and at most once a second (AWS: faster requests are queued).
pub fn read_log_page(dev: &Path) -> Result<Stats, NvmeError> {
    let file = File::open(dev).map_err(|source| NvmeError::Open {
        path: dev.to_path_buf(),
        source,
    })?;
    let is_device = file
        .metadata()
        .map(|m| m.file_type().is_block_device() || m.file_type().is_char_device())
        .map_err(|source| NvmeError::Open {
            path: dev.to_path_buf(),
            source,
        })?;
    if !is_device {
        return Err(NvmeError::NotADevice {
            path: dev.to_path_buf(),
        });
    }
    let mut page = Box::new(Page([0; LOG_PAGE_LEN]));
    let mut cmd = get_log_page_cmd(page.0.as_mut_ptr() as u64);
    // SAFETY: `cmd` is a live, correctly laid out `nvme_passthru_cmd` the kernel reads and writes
    // (`result`); its `addr`/`data_len` describe `page`, a live heap buffer of exactly
    // `data_len` bytes that outlives the call and that nothing else references meanwhile. On a
    // device that is not NVMe the kernel rejects the unknown request number without touching
    // either.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as _,
            &mut cmd as *mut NvmePassthruCmd,
        )
    };
    if rc < 0 {
        return Err(NvmeError::Ioctl {
            path: dev.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    if rc > 0 {
        return Err(NvmeError::Status {
            path: dev.to_path_buf(),
            status: rc,
        });
    }
    parse(&page.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    fn put_u32(p: &mut [u8], off: usize, v: u32) {
        p[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(p: &mut [u8], off: usize, v: u64) {
        p[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Reserved areas filled with 0xAA so that reading one by mistake shows.
    fn page(magic: u32, read_bins: usize, write_bins: usize) -> Vec<u8> {
        let mut p = vec![0xAA; LOG_PAGE_LEN];
        put_u32(&mut p, 0, magic);
        put_u32(&mut p, 4, 7);
        for i in 0..11 {
            put_u64(
                &mut p,
                8 + 8 * i,
                0x0101_0101_0000_0000 * (i as u64 + 1) + 1000 + i as u64,
            );
        }
        for (off, n, tag) in [(512, read_bins, 1u64), (2056, write_bins, 2u64)] {
            put_u64(&mut p, off, n as u64);
            for b in 0..n {
                let o = off + 8 + 24 * b;
                put_u64(&mut p, o, tag * 1_000_000 + b as u64 * 100);
                put_u64(&mut p, o + 8, tag * 1_000_000 + b as u64 * 100 + 99);
                put_u32(&mut p, o + 16, ((tag as u32) << 24) | (b as u32 + 1));
            }
        }
        p
    }

    #[test]
    fn layout_matches_the_packed_c_struct() {
        // amzn_latency_log_page_base: 8 + 11 × 8 + 416 + 2 × (8 + 64 × 24) + 4 + 8 × 4 + 460.
        assert_eq!(8 + 11 * 8 + 416, OFF_READ_HIST);
        assert_eq!(OFF_WRITE_HIST, 2056);
        assert_eq!(OFF_WRITE_HIST + HIST_LEN + 4 + 8 * 4 + 460, LOG_PAGE_LEN);
    }

    #[test]
    fn every_field_parses() {
        let s = parse(&page(EBS_STATS_MAGIC, 5, MAX_HISTOGRAM_BINS)).expect("valid page");
        let want = |i: u64| 0x0101_0101_0000_0000 * (i + 1) + 1000 + i;
        assert_eq!(s.source, Source::Ebs);
        assert_eq!(s.version, 7);
        assert_eq!(s.total_read_ops, want(0));
        assert_eq!(s.total_write_ops, want(1));
        assert_eq!(s.total_read_bytes, want(2));
        assert_eq!(s.total_write_bytes, want(3));
        assert_eq!(s.total_read_time_us, want(4));
        assert_eq!(s.total_write_time_us, want(5));
        assert_eq!(s.volume_exceeded_iops_us, want(6));
        assert_eq!(s.volume_exceeded_tp_us, want(7));
        assert_eq!(s.ec2_instance_exceeded_iops_us, want(8));
        assert_eq!(s.ec2_instance_exceeded_tp_us, want(9));
        assert_eq!(s.volume_queue_length, want(10));
        assert_eq!(s.read_io_latency_histogram.bins.len(), 5);
        assert_eq!(s.write_io_latency_histogram.bins.len(), 64);
        for (hist, tag) in [
            (&s.read_io_latency_histogram, 1u64),
            (&s.write_io_latency_histogram, 2u64),
        ] {
            for (b, bin) in hist.bins.iter().enumerate() {
                assert_eq!(
                    *bin,
                    Bin {
                        lower_us: tag * 1_000_000 + b as u64 * 100,
                        upper_us: tag * 1_000_000 + b as u64 * 100 + 99,
                        count: ((tag as u32) << 24) | (b as u32 + 1),
                    }
                );
            }
        }
        assert_eq!(
            s.read_io_latency_histogram.total_count(),
            5 * (1 << 24) + (1..=5).sum::<u64>()
        );
    }

    #[test]
    fn instance_store_page_and_longer_buffers_parse() {
        let mut p = page(INSTANCE_STORE_STATS_MAGIC, 0, 0);
        p.extend_from_slice(&[0x55; 4096]); // version-1 per-size histograms, ignored
        let s = parse(&p).expect("valid page");
        assert_eq!(s.source, Source::InstanceStore);
        assert!(s.read_io_latency_histogram.bins.is_empty());
        assert_eq!(s.write_io_latency_histogram.total_count(), 0);
    }

    #[test]
    fn bad_pages_are_clear_errors() {
        let err = parse(&page(0x1234_5678, 0, 0)).expect_err("wrong magic");
        assert!(matches!(err, NvmeError::Magic { found: 0x1234_5678 }));
        assert!(err.to_string().contains("0x12345678"), "{err}");
        assert!(err.to_string().contains("not an EC2 NVMe device"), "{err}");
        let err = parse(&page(EBS_STATS_MAGIC, 0, 0)[..4095]).expect_err("short");
        assert!(matches!(err, NvmeError::Short { len: 4095 }));
        assert!(matches!(parse(&[]), Err(NvmeError::Short { len: 0 })));
        let err = parse(&page(EBS_STATS_MAGIC, 65, 0)).expect_err("too many bins");
        assert!(
            matches!(
                err,
                NvmeError::Bins {
                    which: "read",
                    bins: 65
                }
            ),
            "{err}"
        );
        let mut p = page(EBS_STATS_MAGIC, 0, 0);
        put_u64(&mut p, OFF_WRITE_HIST, u64::MAX);
        assert!(matches!(
            parse(&p),
            Err(NvmeError::Bins { which: "write", .. })
        ));
    }

    #[test]
    fn the_ioctl_struct_and_number_match_linux_nvme_ioctl_h() {
        assert_eq!(size_of::<NvmePassthruCmd>(), 72);
        assert_eq!(offset_of!(NvmePassthruCmd, nsid), 4);
        assert_eq!(offset_of!(NvmePassthruCmd, metadata), 16);
        assert_eq!(offset_of!(NvmePassthruCmd, addr), 24);
        assert_eq!(offset_of!(NvmePassthruCmd, data_len), 36);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw10), 40);
        assert_eq!(offset_of!(NvmePassthruCmd, timeout_ms), 64);
        assert_eq!(offset_of!(NvmePassthruCmd, result), 68);
        assert_eq!(NVME_IOCTL_ADMIN_CMD, 0xC048_4E41);
        let cmd = get_log_page_cmd(0xdead_beef);
        assert_eq!(cmd.opcode, 0x02);
        assert_eq!(cmd.nsid, 1);
        assert_eq!(cmd.cdw10, 0x03FF_00D0); // NUMDL 1023 (0's based), LID 0xD0
        assert_eq!(cmd.data_len, 4096);
        assert_eq!(cmd.addr, 0xdead_beef);
    }

    #[test]
    fn non_nvme_devices_give_clean_errors() {
        let err = read_log_page(Path::new("/dev/null")).expect_err("not NVMe");
        assert!(matches!(err, NvmeError::Ioctl { .. }), "{err}");
        assert!(err.to_string().contains("/dev/null"), "{err}");

        let err = read_log_page(Path::new("/nonexistent/nvme9n1")).expect_err("missing");
        assert!(matches!(err, NvmeError::Open { .. }), "{err}");

        let file = tempfile::NamedTempFile::new().expect("tempfile");
        let err = read_log_page(file.path()).expect_err("regular file");
        assert!(matches!(err, NvmeError::NotADevice { .. }), "{err}");

        // A block device that is not NVMe (a loop device), when this machine has one we may open.
        let loop0 = Path::new("/dev/loop0");
        if loop0.exists() {
            let r = read_log_page(loop0);
            assert!(r.is_err(), "{r:?}");
        }
    }
}
