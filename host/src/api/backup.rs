//! `POST /api/backup`: an online backup of the live database, taken by the service.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson};
use super::ApiState;
use crate::store::StoreError;

/// Where to write the backup.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"path": "/var/backups/cnp", "replace": false}))]
pub struct BackupRequest {
    /// An absolute path **on the service's machine**: the file to create, or an existing folder
    /// (the file is then `<db stem>-<UTC time>-manual.db` in it).
    pub path: String,
    /// Replace the file if it exists (default: refuse with 409).
    #[serde(default)]
    pub replace: bool,
}

/// A finished backup: copied, synced to disk and checked (`integrity_check` said `ok`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupDone {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub bytes: u64,
    pub schema_version: u32,
    pub jobs: u64,
    pub executions: u64,
    /// Copy, fsync and integrity check together.
    pub duration_ms: u64,
    pub created_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/backup", operation_id = "createBackup", tag = "monitoring",
    request_body = BackupRequest,
    responses(
        (status = 200, description = "The backup is in place and verified", body = BackupDone),
        (status = 409, description = "The file exists (and `replace` is false)", body = super::ErrorBody),
        (status = 422, description = "`path` is not absolute or its folder does not exist", body = super::ErrorBody),
        (status = 500, description = "The backup failed (code `backup_failed`; nothing is left at `path`)", body = super::ErrorBody),
    ))]
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(req): ApiJson<BackupRequest>,
) -> Result<Json<BackupDone>, ApiError> {
    let path = Path::new(req.path.trim());
    if !path.is_absolute() {
        return Err(ApiError::invalid(
            "path",
            format!(
                "must be an absolute path on the service's machine, got `{}`",
                req.path
            ),
        ));
    }
    let engine = st.engine();
    let now = engine.clock().now();
    let target = crate::engine::backup_target(path, engine.store().path(), now);
    match target.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => {
            return Err(ApiError::invalid(
                "path",
                format!(
                    "the folder of {} does not exist on the service's machine",
                    target.display()
                ),
            ))
        }
    }
    if target.is_dir() {
        return Err(ApiError::invalid(
            "path",
            format!("{} is a folder", target.display()),
        ));
    }
    match engine.backup_now(target.clone(), req.replace).await {
        Ok(r) => Ok(Json(BackupDone {
            path: r.path,
            bytes: r.bytes,
            schema_version: r.schema_version,
            jobs: r.jobs,
            executions: r.executions,
            duration_ms: r.duration_ms,
            created_at: now,
        })),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict(format!(
            "{m} (pass \"replace\": true to replace it)"
        ))),
        Err(e) => {
            tracing::error!(path = %target.display(), error = %e, "backup on demand failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                format!("backup failed: {e}"),
            ))
        }
    }
}
