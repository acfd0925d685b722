//! Reading the config file without trusting it: it may have been replaced by a FIFO (whose
//! `open(2)` would wait for a writer forever), by `/dev/zero` (endless), by a directory, or by
//! something huge. Open with `O_NONBLOCK` (a FIFO opens at once instead of waiting), `fstat` the
//! descriptor (not the path, which may change between the two), accept only a regular file, and
//! read at most [`MAX_BYTES`] + 1 bytes whatever the file claims its size is.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest config accepted. The example config with every key documented is ~8 KiB.
pub const MAX_BYTES: u64 = 1 << 20;

/// The file's text, or a sentence saying why not.
pub fn read_bounded(path: &Path) -> Result<String, String> {
    // The path first, so that a device is refused without being opened (opening some devices
    // has side effects); the descriptor again after opening, as the path may have changed.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open: {e}"))?;
    refuse_special(&meta)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    refuse_special(&meta)?;
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "is {} bytes; a config file may have at most {MAX_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "grew past {MAX_BYTES} bytes while being read; a config file may have at most that"
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

fn refuse_special(meta: &std::fs::Metadata) -> Result<(), String> {
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg.toml");
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        let e = read_bounded(&p).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        // Functional bound: a blocking open would never return at all.
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn devices_directories_and_big_files_are_refused() {
        assert!(read_bounded(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("device"));
        assert!(read_bounded(Path::new("/"))
            .unwrap_err()
            .contains("directory"));
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_BYTES + 1)
            .unwrap();
        assert!(read_bounded(&big).unwrap_err().contains("at most"));
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "[sampler]\n").unwrap();
        assert_eq!(read_bounded(&ok).unwrap(), "[sampler]\n");
        std::fs::write(&ok, b"\xff\n").unwrap();
        assert!(read_bounded(&ok).unwrap_err().contains("UTF-8"));
        assert!(read_bounded(&dir.path().join("none"))
            .unwrap_err()
            .contains("cannot open"));
    }
}
