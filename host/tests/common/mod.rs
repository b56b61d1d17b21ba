//! The store the host's tests run on: the SQLite file at `path`, or, when the suite runs with
//! `CNP_TEST_BACKEND=postgres` (scripts/test.sh's PostgreSQL pass), a database on the test
//! process's private PostgreSQL server. One database per path, so opening the same path again
//! reopens the same database, as a restart does.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cnp::store::{PgOptions, Store};
use cnp_tests::pg::PgServer;

/// Whether this run's store is PostgreSQL.
pub fn on_postgres() -> bool {
    PgServer::requested()
}

static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);

/// PostgreSQL: opening `alias` opens a copy of the database of `path` as it is now, its
/// sessions ended (what a copy of the SQLite file stands for: what a crash leaves behind).
pub fn crash_copy(path: &Path, alias: &Path) {
    let url = PgServer::shared().crash_copy(&pg_options(path).url);
    let mut dbs = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    dbs.get_or_insert_with(HashMap::new)
        .insert(alias.to_owned(), url);
}

fn pg_options(path: &Path) -> PgOptions {
    let mut dbs = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    let url = dbs
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_insert_with(|| PgServer::shared().create_database())
        .clone();
    PgOptions::new(url)
}

/// [`Store::open`] on this run's backend.
pub fn open_store(path: &Path) -> Store {
    if on_postgres() {
        Store::connect(&pg_options(path)).expect("connect to the test PostgreSQL")
    } else {
        Store::open(path).expect("open the SQLite store")
    }
}

/// [`Store::open_inline`] on this run's backend.
pub fn open_store_inline(path: &Path) -> Store {
    if on_postgres() {
        Store::connect_inline(&pg_options(path)).expect("connect to the test PostgreSQL")
    } else {
        Store::open_inline(path).expect("open the SQLite store")
    }
}
