//! One module per sysfs file family: a pure `parse` and a thin `read(&Roots)`.

pub mod bdi;
pub mod block;
