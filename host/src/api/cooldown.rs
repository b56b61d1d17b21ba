//! `GET /api/cooldown` and `POST /api/cooldown/clear`: the Claude usage-limit cooldown.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::ApiState;
use crate::engine::Cooldown;

/// The cooldown in force, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct CooldownView {
    pub active: bool,
    /// `since`, `until` (null: reset unknown, probing), `reason`, `source_execution`,
    /// `source_job`, `next_probe`, `probe_interval_seconds`, `probes`, `last_probe`, `deferred`.
    #[schema(value_type = Option<Object>)]
    pub cooldown: Option<Cooldown>,
}

#[utoipa::path(get, path = "/api/cooldown", operation_id = "getCooldown", tag = "monitoring",
    responses((status = 200, description = "The Claude usage-limit cooldown in force (`cooldown` null when none)", body = CooldownView)))]
pub async fn show(State(st): State<ApiState>) -> Json<CooldownView> {
    let cooldown = st.engine().cooldown();
    Json(CooldownView {
        active: cooldown.is_some(),
        cooldown,
    })
}

/// What clearing did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cleared {
    /// Whether a cooldown was in force.
    pub cleared: bool,
    /// The cooldown that ended.
    #[schema(value_type = Option<Object>)]
    pub cooldown: Option<Cooldown>,
}

#[utoipa::path(post, path = "/api/cooldown/clear", operation_id = "clearCooldown", tag = "monitoring",
    responses((status = 200, description = "The cooldown ended now: deferred runs are released in priority order (`cleared` false when there was none)", body = Cleared)))]
pub async fn clear(State(st): State<ApiState>) -> Result<Json<Cleared>, ApiError> {
    let before = st.engine().cooldown();
    let ended = st.engine().clear_cooldown().await?;
    Ok(Json(Cleared {
        cleared: ended.is_some(),
        cooldown: ended.map(|c| Cooldown {
            deferred: before.map_or(0, |b| b.deferred),
            ..c
        }),
    }))
}
