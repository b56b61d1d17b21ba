//! Versioned migrations. A migration, once released, is never edited: add a new one.

use rusqlite::Connection;

use super::StoreError;

/// Each entry upgrades the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: jobs, prompts, executions with a unique (job, slot, attempt) key, logs, service state.
    r#"
    CREATE TABLE prompts (
        id          TEXT PRIMARY KEY,
        title       TEXT NOT NULL,
        content     TEXT NOT NULL,
        tags        TEXT NOT NULL DEFAULT '[]',
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );

    CREATE TABLE jobs (
        id                  TEXT PRIMARY KEY,
        name                TEXT NOT NULL UNIQUE,
        prompt_id           TEXT REFERENCES prompts(id) ON DELETE RESTRICT,
        prompt              TEXT,
        schedule            TEXT NOT NULL,
        status              TEXT NOT NULL,
        priority            INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
        execution_options   TEXT NOT NULL,
        retry_config        TEXT,
        notification_config TEXT,
        resource_limits     TEXT,
        tags                TEXT NOT NULL DEFAULT '[]',
        source              TEXT,
        execution_count     INTEGER NOT NULL DEFAULT 0,
        success_count       INTEGER NOT NULL DEFAULT 0,
        failure_count       INTEGER NOT NULL DEFAULT 0,
        total_time_ms       INTEGER NOT NULL DEFAULT 0,
        next_run_time       INTEGER,
        last_run_time       INTEGER,
        -- the latest schedule slot already decided (fired, or skipped by policy); slots after it
        -- and up to now are what a restart must catch up on
        last_slot           INTEGER,
        created_at          INTEGER NOT NULL,
        updated_at          INTEGER NOT NULL,
        CHECK (prompt_id IS NOT NULL OR prompt IS NOT NULL)
    );
    CREATE INDEX jobs_source ON jobs(source) WHERE source IS NOT NULL;

    CREATE TABLE executions (
        id                TEXT PRIMARY KEY,
        job_id            TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        status            TEXT NOT NULL,
        trigger           TEXT NOT NULL,
        -- the schedule slot (unix ms) for scheduled and catch-up runs; NULL for manual ones
        slot              INTEGER,
        scheduled_for     INTEGER,
        queued_at         INTEGER NOT NULL,
        started_at        INTEGER,
        completed_at      INTEGER,
        execution_time_ms INTEGER,
        prompt            TEXT,
        output            TEXT,
        error             TEXT,
        retry_count       INTEGER NOT NULL DEFAULT 0,
        outcome           TEXT,
        exit_code         INTEGER,
        session_id        TEXT,
        cost_usd          REAL,
        usage             TEXT,
        resource_usage    TEXT,
        pid               INTEGER,
        UNIQUE (job_id, slot, retry_count)
    );
    CREATE INDEX executions_job_time ON executions(job_id, queued_at DESC);
    CREATE INDEX executions_pending ON executions(status)
        WHERE status IN ('queued', 'deferred', 'running');
    CREATE INDEX executions_queued_at ON executions(queued_at);

    CREATE TABLE execution_logs (
        execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
        seq          INTEGER NOT NULL,
        stream       TEXT NOT NULL,
        ts           INTEGER NOT NULL,
        line         TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    ) WITHOUT ROWID;

    CREATE TABLE service_state (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // v2: retries link every attempt to the run's first attempt (for manual runs, whose slot is
    // NULL, the (job, slot, attempt) key cannot).
    r#"
    ALTER TABLE executions ADD COLUMN first_attempt_id TEXT;
    CREATE INDEX executions_first_attempt ON executions(first_attempt_id)
        WHERE first_attempt_id IS NOT NULL;
    "#,
    // v3: notification deliveries, one row per (event, channel) attempt outcome.
    r#"
    CREATE TABLE notification_deliveries (
        id           INTEGER PRIMARY KEY,
        execution_id TEXT REFERENCES executions(id) ON DELETE CASCADE,
        job_id       TEXT,
        event        TEXT NOT NULL,
        channel      TEXT NOT NULL,
        status       TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        detail       TEXT,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
    );
    CREATE INDEX notification_deliveries_execution ON notification_deliveries(execution_id);
    CREATE INDEX notification_deliveries_created ON notification_deliveries(created_at);
    "#,
    // v4: web dashboard login sessions (a SHA-256 of the cookie, never the cookie itself).
    r#"
    CREATE TABLE dashboard_sessions (
        id_hash    TEXT PRIMARY KEY,
        csrf       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
    "#,
    // v5: job templates (`body` is the JSON of their variables and job tree; `source` the
    // template file, NULL for templates made through the API), and the template + variables a
    // job was made from.
    r#"
    CREATE TABLE templates (
        name        TEXT PRIMARY KEY,
        description TEXT,
        body        TEXT NOT NULL,
        source      TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN template TEXT;
    ALTER TABLE jobs ADD COLUMN template_use TEXT;
    CREATE INDEX jobs_template ON jobs(template) WHERE template IS NOT NULL;
    "#,
    // v6: workflows. Jobs name their upstreams (`depends_on`, JSON); a pass ties the runs one
    // run started together; each edge's verdict in a pass is kept, so a fan-in knows which of
    // its upstreams have ended; a run started by its upstreams is keyed by (pass, job), so it
    // is recorded once, whatever crashes and restarts happen.
    r#"
    ALTER TABLE jobs ADD COLUMN depends_on TEXT;
    ALTER TABLE executions ADD COLUMN workflow_run_id TEXT;
    ALTER TABLE executions ADD COLUMN upstream_ids TEXT;
    CREATE UNIQUE INDEX executions_workflow_node ON executions(workflow_run_id, job_id)
        WHERE trigger = 'dependency';
    CREATE INDEX executions_workflow ON executions(workflow_run_id)
        WHERE workflow_run_id IS NOT NULL;

    CREATE TABLE workflow_runs (
        id                TEXT PRIMARY KEY,
        root_job_id       TEXT,
        root_execution_id TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        cancelled_at      INTEGER
    );
    CREATE INDEX workflow_runs_created ON workflow_runs(created_at);

    CREATE TABLE workflow_edges (
        pass_id            TEXT NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
        downstream_job     TEXT NOT NULL,
        upstream_job       TEXT NOT NULL,
        upstream_execution TEXT NOT NULL,
        satisfied          INTEGER NOT NULL,
        reason             TEXT,
        created_at         INTEGER NOT NULL,
        PRIMARY KEY (pass_id, downstream_job, upstream_job)
    ) WITHOUT ROWID;
    "#,
    // v7: what became of a run's git worktree (`execution.worktree`), JSON.
    r#"
    ALTER TABLE executions ADD COLUMN worktree TEXT;
    "#,
    // v8: costs. A job's spending caps (`budget:`, JSON). `executions_completed`: the cost
    // report's and the budget windows' ranges of `completed_at`. Each job's running cost
    // totals, kept by the end of every run (`finish_conn`) like its other statistics, so the
    // Prometheus counters never drop when retention prunes runs; started from the runs kept so
    // far. Counted: runs that ended after running the CLI (these statuses, with a
    // `started_at`); `uncosted_runs`: those that reported no cost.
    r#"
    ALTER TABLE jobs ADD COLUMN budget TEXT;
    CREATE INDEX IF NOT EXISTS executions_completed ON executions(completed_at)
        WHERE completed_at IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN cost_usd_total REAL NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN uncosted_runs INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET
        cost_usd_total = (SELECT TOTAL(e.cost_usd) FROM executions e
            WHERE e.job_id = jobs.id AND e.started_at IS NOT NULL
              AND e.status IN ('completed', 'failed', 'timed_out', 'cancelled', 'interrupted')),
        uncosted_runs = (SELECT COUNT(*) FROM executions e
            WHERE e.job_id = jobs.id AND e.started_at IS NOT NULL AND e.cost_usd IS NULL
              AND e.status IN ('completed', 'failed', 'timed_out', 'cancelled', 'interrupted'));
    "#,
    // v9: the claim columns of several instances sharing a PostgreSQL database (its schema v2),
    // kept here too so both backends run the same statements; always NULL on SQLite, where
    // one process owns every run.
    r#"
    ALTER TABLE executions ADD COLUMN owner TEXT;
    ALTER TABLE executions ADD COLUMN lease_until INTEGER;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to [`SCHEMA_VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database has schema version {current}, newer than this cnp understands \
             ({SCHEMA_VERSION}); upgrade cnp or point it at another database"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}
