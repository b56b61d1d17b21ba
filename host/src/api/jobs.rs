//! `/api/jobs…`: job CRUD, run now / later, pause, resume, a job's run history.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, OptionalJson};
use super::{ApiState, ListParams, Page};
use crate::manifest::JobSpec;
use crate::model::{Job, JobExecution};
use crate::store::{ExecutionFilter, JobFilter};

/// Body of `POST /api/jobs/{id}/execute` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"delay_seconds": 600}))]
pub struct ExecuteRequest {
    /// Start after this many seconds instead of now.
    pub delay_seconds: Option<u64>,
}

/// Answer of `POST /api/jobs/{id}/execute`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteResponse {
    pub execution_id: String,
}

/// The longest delay a delayed run may ask for (a year).
const MAX_DELAY_SECONDS: u64 = 366 * 24 * 3600;

#[utoipa::path(post, path = "/api/jobs", operation_id = "createJob", tag = "jobs",
    request_body(content = JobSpec, description = "A job definition (the manifest shape)"),
    responses(
        (status = 201, description = "The created job", body = Job),
        (status = 409, description = "A job with that name exists", body = super::ErrorBody),
        (status = 422, description = "Invalid definition; `field` names the offending field", body = super::ErrorBody),
    ))]
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = st.engine().create_job(spec, None).await?;
    Ok((StatusCode::CREATED, Json(job.redacted())))
}

#[utoipa::path(get, path = "/api/jobs", operation_id = "listJobs", tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "active | paused | disabled"),
        ("tag" = Option<String>, Query, description = "Only jobs with this tag"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses((status = 200, description = "A page of jobs, by name", body = Page<Job>)))]
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<Job>>, ApiError> {
    let (limit, offset) = q.page()?;
    let filter = JobFilter {
        status: q.job_status()?,
        tag: q.tag.clone().filter(|t| !t.is_empty()),
        limit: Some(limit),
        offset,
        ..Default::default()
    };
    let store = st.engine().store();
    let (items, total) =
        tokio::try_join!(store.list_jobs(filter.clone()), store.count_jobs(filter))?;
    Ok(Json(Page {
        items: items.into_iter().map(Job::redacted).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn show(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(st.engine().job(&id).await?.redacted()))
}

#[utoipa::path(put, path = "/api/jobs/{id}", operation_id = "updateJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    request_body(content = JobSpec, description = "The job's full new definition"),
    responses(
        (status = 200, description = "The updated job (id, statistics and history kept)", body = Job),
        (status = 404, description = "No such job", body = super::ErrorBody),
        (status = 409, description = "Name taken, or the job belongs to a manifest file", body = super::ErrorBody),
        (status = 422, description = "Invalid definition", body = super::ErrorBody),
    ))]
pub async fn update(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(mut spec): ApiJson<JobSpec>,
) -> Result<Json<Job>, ApiError> {
    let job = st.engine().job(&id).await?;
    refuse_manifest_owned(&job, "change")?;
    // A definition read from this API carries `<redacted>` where secrets were: keep those.
    spec.restore_secrets(&job);
    Ok(Json(
        st.engine()
            .update_job(&job.id, spec, None)
            .await?
            .redacted(),
    ))
}

#[utoipa::path(delete, path = "/api/jobs/{id}", operation_id = "deleteJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    responses(
        (status = 204, description = "Deleted, with its history; its running runs are cancelled"),
        (status = 404, description = "No such job", body = super::ErrorBody),
        (status = 409, description = "The job belongs to a manifest file", body = super::ErrorBody),
    ))]
pub async fn delete(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let job = st.engine().job(&id).await?;
    refuse_manifest_owned(&job, "delete")?;
    st.engine().delete_job(&job.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A job defined by a manifest file is changed by editing that file: an API edit would be
/// undone by the next sync.
fn refuse_manifest_owned(job: &Job, what: &str) -> Result<(), ApiError> {
    match &job.source {
        Some(file) => Err(ApiError::conflict(format!(
            "job `{}` is defined by the manifest file {file}: {what} it there",
            job.name
        ))),
        None => Ok(()),
    }
}

#[utoipa::path(post, path = "/api/jobs/{id}/execute", operation_id = "executeJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    request_body(content = ExecuteRequest, description = "Optional: `{\"delay_seconds\": N}`"),
    responses(
        (status = 202, description = "Run recorded and queued (or delayed)", body = ExecuteResponse),
        (status = 404, description = "No such job", body = super::ErrorBody),
        (status = 503, description = "Shutting down", body = super::ErrorBody),
    ))]
pub async fn execute(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ExecuteRequest>,
) -> Result<(StatusCode, Json<ExecuteResponse>), ApiError> {
    let delay = body.unwrap_or_default().delay_seconds;
    let execution_id = match delay {
        None | Some(0) => st.engine().run_now(&id).await?,
        Some(s) if s > MAX_DELAY_SECONDS => {
            return Err(ApiError::invalid(
                "delay_seconds",
                format!("must be at most {MAX_DELAY_SECONDS} (a year)"),
            ))
        }
        Some(s) => st.engine().run_after(&id, Duration::from_secs(s)).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(ExecuteResponse { execution_id })))
}

#[utoipa::path(post, path = "/api/jobs/{id}/pause", operation_id = "pauseJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    responses(
        (status = 200, description = "The paused job", body = Job),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn pause(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(st.engine().pause_job(&id).await?.redacted()))
}

#[utoipa::path(post, path = "/api/jobs/{id}/resume", operation_id = "resumeJob", tag = "jobs",
    params(("id" = String, Path, description = "Job id or name")),
    responses(
        (status = 200, description = "The resumed (active) job", body = Job),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn resume(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(st.engine().resume_job(&id).await?.redacted()))
}

#[utoipa::path(get, path = "/api/jobs/{id}/executions", operation_id = "listJobExecutions", tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id or name"),
        ("status" = Option<String>, Query, description = "Execution status"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses(
        (status = 200, description = "A page of the job's executions, newest first", body = Page<JobExecution>),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn executions(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<JobExecution>>, ApiError> {
    let (limit, offset) = q.page()?;
    let status = q.execution_status()?;
    let job = st.engine().job(&id).await?;
    let filter = ExecutionFilter {
        job_id: Some(job.id),
        status,
        limit: Some(limit),
        offset,
    };
    super::executions::page(&st, filter).await.map(Json)
}
