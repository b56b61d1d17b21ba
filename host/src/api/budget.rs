//! `GET /api/budget`, `PUT /api/budget` and `DELETE /api/budget`: spending caps, what was spent
//! in their windows, and the runs they hold (docs/budgets.md).

use axum::extract::State;
use axum::Json;

use super::error::{ApiError, ApiJson};
use super::ApiState;
use crate::engine::BudgetStatus;
use crate::model::Budget;

#[utoipa::path(get, path = "/api/budget", operation_id = "getBudget", tag = "costs",
    responses((status = 200, description = "The global caps and every job's, what was spent in their windows (the last 24 hours, the last 30 days), and the runs they hold", body = BudgetStatus)))]
pub async fn show(State(st): State<ApiState>) -> Json<BudgetStatus> {
    Json(st.engine().budget_status().await)
}

#[utoipa::path(put, path = "/api/budget", operation_id = "setBudget", tag = "costs",
    request_body(content = Budget, description = "The global caps to use instead of the config's `[budget]` (kept across restarts until `DELETE /api/budget`); raising a cap releases the runs it held"),
    responses(
        (status = 200, description = "The budgets with the new global caps", body = BudgetStatus),
        (status = 422, description = "A cap that is not a number ≥ 0; `field` names it", body = super::error::ErrorBody),
    ))]
pub async fn set(
    State(st): State<ApiState>,
    ApiJson(budget): ApiJson<Budget>,
) -> Result<Json<BudgetStatus>, ApiError> {
    Ok(Json(st.engine().set_global_budget(budget).await?))
}

#[utoipa::path(delete, path = "/api/budget", operation_id = "resetBudget", tag = "costs",
    responses((status = 200, description = "The config's `[budget]` applies again", body = BudgetStatus)))]
pub async fn reset(State(st): State<ApiState>) -> Result<Json<BudgetStatus>, ApiError> {
    Ok(Json(st.engine().reset_global_budget().await?))
}
