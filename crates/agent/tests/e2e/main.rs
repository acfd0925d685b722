#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! End-to-end tests: the real `stallwatch` binary, real sockets, real kernel files. One test
//! binary (modules below) to keep link time down.

mod cardinality;
mod cloud;
mod config_bounds;
mod containers;
mod containers_shapes;
mod dashboards;
mod deploy;
mod disk_stall;
mod docker;
mod doctor;
mod dstate;
mod dstate_alerting;
mod dstate_bpf;
mod dstate_rig;
mod dstate_stacks;
mod fleet;
mod golden;
mod harness;
mod http;
mod hung;
mod hung_reload;
mod hung_tools;
mod incident_store;
mod kernel;
mod page;
mod probe_hung;
mod promstack;
mod rules;
mod soak;
mod stuck;
mod verdict;
mod web_auth;
mod web_limits;
mod writeback;
