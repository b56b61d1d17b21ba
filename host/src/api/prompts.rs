//! `/api/prompts…`: the stored prompts jobs refer to by `prompt_id`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson};
use super::{ApiState, ListParams, Page};
use crate::model::Prompt;

/// Body of `POST /api/prompts` and `PUT /api/prompts/{id}`.
/// A prompt to store: `id` (optional; made from the title when absent) is how jobs refer to it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "code-quality-check", "title": "Code quality check",
    "content": "Review the diff of the last day for bugs and risky changes.", "tags": ["review"]}))]
pub struct PromptInput {
    /// Letters, digits, `-`, `_`, `.`; at most 100. On create: default a slug of the title.
    /// On update: must match the path when given.
    pub id: Option<String>,
    pub title: String,
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn validate(p: &PromptInput) -> Result<(), ApiError> {
    if p.title.trim().is_empty() {
        return Err(ApiError::invalid("title", "must not be empty"));
    }
    if p.content.trim().is_empty() {
        return Err(ApiError::invalid("content", "must not be empty"));
    }
    if let Some(t) = p.tags.iter().find(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid("tags", format!("empty tag `{t}`")));
    }
    if let Some(id) = &p.id {
        validate_id(id)?;
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "id",
            "use 1–100 letters, digits, `-`, `_` or `.` (not starting with `.`)",
        ))
    }
}

/// `Daily Report!` → `daily-report`.
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s = s.trim_end_matches('-');
    s.chars().take(80).collect()
}

#[utoipa::path(get, path = "/api/prompts", operation_id = "listPrompts", tag = "prompts",
    params(
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses((status = 200, description = "A page of prompts, by id", body = Page<Prompt>)))]
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<Prompt>>, ApiError> {
    let (limit, offset) = q.page()?;
    let all = st.engine().store().list_prompts().await?;
    Ok(Json(Page::of(all, limit, offset, |p| p)))
}

#[utoipa::path(post, path = "/api/prompts", operation_id = "createPrompt", tag = "prompts",
    request_body = PromptInput,
    responses(
        (status = 201, description = "The created prompt", body = Prompt),
        (status = 409, description = "A prompt with that id exists", body = super::ErrorBody),
        (status = 422, description = "Invalid prompt", body = super::ErrorBody),
    ))]
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(input): ApiJson<PromptInput>,
) -> Result<(StatusCode, Json<Prompt>), ApiError> {
    Ok((StatusCode::CREATED, Json(create_prompt(&st, input).await?)))
}

/// Stores a new prompt (the API's and the dashboard's way): checked, with an id from its
/// title when none is given.
pub(super) async fn create_prompt(st: &ApiState, input: PromptInput) -> Result<Prompt, ApiError> {
    validate(&input)?;
    let store = st.engine().store();
    let id = match &input.id {
        Some(id) => {
            if store.get_prompt(id.clone()).await?.is_some() {
                return Err(ApiError::conflict(format!(
                    "a prompt `{id}` already exists"
                )));
            }
            id.clone()
        }
        None => {
            let base = Some(slug(&input.title))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "prompt".into());
            let mut id = base.clone();
            let mut n = 2;
            while store.get_prompt(id.clone()).await?.is_some() {
                id = format!("{base}-{n}");
                n += 1;
            }
            id
        }
    };
    let now = st.engine().clock().now();
    let prompt = Prompt {
        id,
        title: input.title.trim().to_owned(),
        content: input.content,
        tags: input.tags,
        created_at: now,
        updated_at: now,
    };
    Ok(store.upsert_prompt(prompt).await?)
}

#[utoipa::path(get, path = "/api/prompts/{id}", operation_id = "getPrompt", tag = "prompts",
    params(("id" = String, Path, description = "Prompt id")),
    responses(
        (status = 200, description = "The prompt", body = Prompt),
        (status = 404, description = "No such prompt", body = super::ErrorBody),
    ))]
pub async fn show(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Prompt>, ApiError> {
    match st.engine().store().get_prompt(id.clone()).await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError::not_found("prompt", &id)),
    }
}

#[utoipa::path(put, path = "/api/prompts/{id}", operation_id = "updatePrompt", tag = "prompts",
    params(("id" = String, Path, description = "Prompt id")),
    request_body = PromptInput,
    responses(
        (status = 200, description = "The updated prompt (jobs using it run the new text)", body = Prompt),
        (status = 404, description = "No such prompt", body = super::ErrorBody),
        (status = 422, description = "Invalid prompt", body = super::ErrorBody),
    ))]
pub async fn update(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<PromptInput>,
) -> Result<Json<Prompt>, ApiError> {
    Ok(Json(update_prompt(&st, &id, input).await?))
}

/// Replaces a stored prompt's title, text and tags (its id stays).
pub(super) async fn update_prompt(
    st: &ApiState,
    id: &str,
    input: PromptInput,
) -> Result<Prompt, ApiError> {
    validate(&input)?;
    if input.id.as_deref().is_some_and(|i| i != id) {
        return Err(ApiError::invalid(
            "id",
            "a prompt's id cannot change (create a new prompt instead)",
        ));
    }
    let store = st.engine().store();
    let Some(old) = store.get_prompt(id.to_owned()).await? else {
        return Err(ApiError::not_found("prompt", id));
    };
    let prompt = Prompt {
        title: input.title.trim().to_owned(),
        content: input.content,
        tags: input.tags,
        updated_at: st.engine().clock().now(),
        ..old
    };
    Ok(store.upsert_prompt(prompt).await?)
}

#[utoipa::path(delete, path = "/api/prompts/{id}", operation_id = "deletePrompt", tag = "prompts",
    params(("id" = String, Path, description = "Prompt id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such prompt", body = super::ErrorBody),
        (status = 409, description = "Jobs use it", body = super::ErrorBody),
    ))]
pub async fn delete(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.engine().store().delete_prompt(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        assert_eq!(super::slug("Daily Report!"), "daily-report");
        assert_eq!(super::slug("  --x__y  "), "x-y");
        assert_eq!(super::slug("日本"), "");
    }
}
