//! `/api/executions…`: run history across jobs, one run, cancel, its logs.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::{ApiState, ListParams, Page, MAX_LIMIT};
use crate::model::{ExecutionDetail, JobExecution, LogLine};
use crate::store::ExecutionFilter;

/// Answer of `POST /api/executions/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    /// `false` when the run had already finished.
    pub cancelled: bool,
}

/// Query of `GET /api/executions/{id}/logs`.
#[derive(Debug, Default, Deserialize)]
pub struct LogParams {
    pub after_seq: Option<String>,
    pub limit: Option<String>,
}

pub(super) async fn page(
    st: &ApiState,
    filter: ExecutionFilter,
) -> Result<Page<JobExecution>, ApiError> {
    let (limit, offset) = (filter.limit.unwrap_or(super::DEFAULT_LIMIT), filter.offset);
    let store = st.engine().store();
    let (items, total) = tokio::try_join!(
        store.list_executions(filter.clone()),
        store.count_executions(filter)
    )?;
    Ok(Page {
        items,
        total,
        limit,
        offset,
    })
}

#[utoipa::path(get, path = "/api/executions", operation_id = "listExecutions", tag = "executions",
    params(
        ("job_id" = Option<String>, Query, description = "Only this job's (id or name)"),
        ("status" = Option<String>, Query, description = "Execution status"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses(
        (status = 200, description = "A page of executions, newest first", body = Page<JobExecution>),
        (status = 404, description = "`job_id` names no job", body = super::ErrorBody),
    ))]
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<JobExecution>>, ApiError> {
    let (limit, offset) = q.page()?;
    let status = q.execution_status()?;
    let job_id = match q.job_id.as_deref().filter(|j| !j.is_empty()) {
        Some(j) => Some(st.engine().job(j).await?.id),
        None => None,
    };
    let filter = ExecutionFilter {
        job_id,
        status,
        limit: Some(limit),
        offset,
    };
    page(&st, filter).await.map(Json)
}

#[utoipa::path(get, path = "/api/executions/{id}", operation_id = "getExecution", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "The execution, with its run's attempts: `attempt` of `max_attempts`, `next_attempt` (the retry recorded after it), `attempts` (first to latest) and `run_status` (`queued`, `retry_pending`, `running` or `finished`: a failed attempt whose retry is pending is not the run's end)", body = ExecutionDetail),
        (status = 404, description = "No such execution", body = super::ErrorBody),
    ))]
pub async fn show(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionDetail>, ApiError> {
    Ok(Json(st.engine().execution_detail(&id).await?))
}

#[utoipa::path(post, path = "/api/executions/{id}/cancel", operation_id = "cancelExecution", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "Whether it was stopped (a running CLI is killed: TERM, grace, KILL; recorded `cancelled`)", body = CancelResponse),
        (status = 404, description = "No such execution", body = super::ErrorBody),
    ))]
pub async fn cancel(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CancelResponse>, ApiError> {
    let cancelled = st.engine().cancel_execution(&id).await?;
    Ok(Json(CancelResponse { cancelled }))
}

#[utoipa::path(get, path = "/api/executions/{id}/logs", operation_id = "getExecutionLogs", tag = "executions",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("after_seq" = Option<u64>, Query, description = "Only lines with a larger `seq`"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 1000"),
    ),
    responses(
        (status = 200, description = "Log lines in `seq` order; `total` counts all the run's stored lines (page on with `after_seq`)", body = Page<LogLine>),
        (status = 404, description = "No such execution", body = super::ErrorBody),
    ))]
pub async fn logs(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LogParams>,
) -> Result<Json<Page<LogLine>>, ApiError> {
    let after = match q.after_seq.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::invalid("after_seq", format!("must be a whole number, got `{s}`"))
        })?),
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => MAX_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be a whole number 1–{MAX_LIMIT}, got `{s}`"),
                ))
            }
        },
    };
    let store = st.engine().store();
    if store.get_execution(id.clone()).await?.is_none() {
        return Err(ApiError::not_found("execution", &id));
    }
    let (items, total) = tokio::try_join!(
        store.get_logs(id.clone(), after, limit),
        store.count_logs(id)
    )?;
    Ok(Json(Page {
        total,
        items,
        limit,
        offset: 0,
    }))
}
