//! The sync-write probe (placeholder until written).
