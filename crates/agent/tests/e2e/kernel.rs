//! Real kernel: make real dirty pages and real writeback happen and watch the running agent
//! see them within a bounded time.

use std::io::Write;
use std::time::Duration;

use crate::harness::{write, Agent};

const MIB: f64 = 1048576.0;

#[test]
fn buffered_writes_raise_the_dirty_peak_and_sync_advances_written_pages() {
    // A real disk-backed filesystem (the target dir), not tmpfs: tmpfs pages are never dirty.
    // Sampling at 100 ms catches the peak while the data is being written, even if another
    // process on the machine calls sync(2) right after (dockerd does when it extracts layers).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "[sampler]\ninterval = \"100ms\"\npeak_window = \"120s\"\n",
    );
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let m0 = agent.wait_for(Duration::from_secs(10), "first snapshot", |m| {
        m.get("stallwatch_memory_dirty_peak_bytes").is_some()
            && m.get("stallwatch_vm_written_pages_total").is_some()
    });
    let dirty0 = m0.get("stallwatch_memory_dirty_bytes").unwrap();
    let written0 = m0.get("stallwatch_vm_written_pages_total").unwrap();
    let bg = m0
        .get("stallwatch_dirty_background_threshold_bytes")
        .unwrap();
    // Stay below the background threshold so the kernel keeps the pages dirty (until
    // dirty_expire, 30 s by default) instead of flushing them at once.
    let size_mib = (300.0f64).min(bg / MIB * 0.6).max(64.0) as usize;

    let path = dir.path().join("dirty.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..size_mib {
        f.write_all(&chunk).unwrap();
    }
    drop(f); // no fsync: the data stays in the page cache, dirty

    let want_peak = dirty0 + size_mib as f64 * MIB * 0.5;
    let m = agent.wait_for(Duration::from_secs(10), "Dirty peak to rise", |m| {
        m.get("stallwatch_memory_dirty_peak_bytes")
            .is_some_and(|p| p >= want_peak)
    });
    let peak = m.get("stallwatch_memory_dirty_peak_bytes").unwrap();

    // Now write it back; the kernel's written-pages counter must advance by about as much.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let page = 4096.0;
    let want_written = written0 + size_mib as f64 * MIB * 0.5 / page;
    let m = agent.wait_for(
        Duration::from_secs(30),
        "vm_written_pages_total to advance",
        |m| {
            m.get("stallwatch_vm_written_pages_total")
                .is_some_and(|w| w >= want_written)
        },
    );
    // The peak survives the flush (it is a window max, not the current value).
    assert!(m.get("stallwatch_memory_dirty_peak_bytes").unwrap() >= peak * 0.99);
    assert!(m.get("stallwatch_memory_dirty_bytes").unwrap() < peak);
}
