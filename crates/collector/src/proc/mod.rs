//! One module per procfs file: a pure `parse(&str)` and a thin `read(&Roots)`.

pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod mountinfo;
pub mod net_dev;
pub mod overlays;
pub mod pid_cgroup;
pub mod pressure;
#[cfg(test)]
mod proptests;
pub mod stat;
pub mod sys_kernel;
pub mod sys_vm;
pub mod task_stat;
pub mod tasks;
pub mod vmstat;

use std::path::Path;

use crate::error::{Error, ParseError};
use crate::roots::read_optional;

/// Reads `path` and parses it; `Ok(None)` when the file does not exist.
pub(crate) fn read_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, Error> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => parse(&text)
            .map(Some)
            .map_err(|e| Error::parse(path.to_path_buf(), e)),
    }
}
