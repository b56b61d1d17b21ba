//! Notification delivery outcomes: per execution, and the most recent ones.

use axum::extract::{Path, Query, State};
use axum::Json;

use super::error::ApiError;
use super::{ApiState, ListParams, Page};
use crate::notify::Delivery;

#[utoipa::path(get, path = "/api/executions/{id}/notifications", operation_id = "listExecutionNotifications", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "The execution's notification deliveries, oldest first: \
            `event`, `channel`, `status` (sent, failed, rate_limited, dropped), `attempts`, \
            `detail` (receipt or error), `created_at`, `delivered_at`", body = Page<Delivery>),
        (status = 404, description = "No such execution", body = super::ErrorBody),
    ))]
pub async fn of_execution(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Page<Delivery>>, ApiError> {
    let store = st.engine().store();
    if store.get_execution(id.clone()).await?.is_none() {
        return Err(ApiError::not_found("execution", &id));
    }
    let items = store.deliveries_of_execution(id).await?;
    let n = items.len() as u32;
    Ok(Json(Page {
        total: n as u64,
        items,
        limit: n,
        offset: 0,
    }))
}

#[utoipa::path(get, path = "/api/notifications", operation_id = "listNotifications", tag = "monitoring",
    params(("limit" = Option<u32>, Query, description = "1–1000, default 50")),
    responses(
        (status = 200, description = "The most recent notification deliveries, newest first \
            (all channels and events, also those about no execution)", body = Page<Delivery>),
    ))]
pub async fn recent(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<Delivery>>, ApiError> {
    let (limit, _) = q.page()?;
    let store = st.engine().store();
    let (items, total) =
        tokio::try_join!(store.recent_deliveries(limit), store.count_deliveries())?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset: 0,
    }))
}
