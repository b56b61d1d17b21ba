//! `/api/workflows…`: workflow passes (the runs one run started through `depends_on`), one
//! pass as a graph, cancelling a pass.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::{ApiState, ListParams, Page};
use crate::model::WorkflowPass;
use crate::store::WorkflowRun;

/// Answer of `POST /api/workflows/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelPassResponse {
    /// Runs of the pass that were queued or running and are now cancelled.
    pub cancelled_runs: usize,
}

#[utoipa::path(get, path = "/api/workflows", operation_id = "listWorkflows", tag = "workflows",
    params(
        ("job_id" = Option<String>, Query, description = "Only passes this job (id or name) began or ran in"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses(
        (status = 200, description = "A page of passes, newest first: `id`, `root_job_id`, `root_job_name`, `root_execution_id`, `created_at`, `cancelled_at`, `runs` (count of runs by status)", body = Page<WorkflowRun>),
        (status = 404, description = "`job_id` names no job", body = super::ErrorBody),
    ))]
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<WorkflowRun>>, ApiError> {
    let (limit, offset) = q.page()?;
    let job_id = match q.job_id.as_deref().filter(|j| !j.is_empty()) {
        Some(j) => Some(st.engine().job(j).await?.id),
        None => None,
    };
    let store = st.engine().store();
    let (items, total) = tokio::try_join!(
        store.list_workflow_runs(job_id.clone(), limit, offset),
        store.count_workflow_runs(job_id)
    )?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/workflows/{id}", operation_id = "getWorkflow", tag = "workflows",
    params(("id" = String, Path, description = "Pass id (its first run's execution id)")),
    responses(
        (status = 200, description = "The pass as a graph: its jobs with their runs' status, its edges with their verdicts", body = WorkflowPass),
        (status = 404, description = "No such pass", body = super::ErrorBody),
    ))]
pub async fn show(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowPass>, ApiError> {
    Ok(Json(st.engine().workflow_pass(&id).await?))
}

#[utoipa::path(post, path = "/api/workflows/{id}/cancel", operation_id = "cancelWorkflow", tag = "workflows",
    params(("id" = String, Path, description = "Pass id")),
    responses(
        (status = 200, description = "Nothing more of the pass starts; its queued and running runs are cancelled (the jobs it had not reached yet are recorded skipped)", body = CancelPassResponse),
        (status = 404, description = "No such pass", body = super::ErrorBody),
    ))]
pub async fn cancel(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CancelPassResponse>, ApiError> {
    let cancelled_runs = st.engine().cancel_workflow(&id).await?;
    Ok(Json(CancelPassResponse { cancelled_runs }))
}
