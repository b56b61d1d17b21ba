//! Test support shared by the host's tests, the end-to-end tests and the benchmarks: a private
//! PostgreSQL server ([`pg::PgServer`]).

pub mod pg;
