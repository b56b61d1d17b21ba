//! Stored prompts: list, create, edit, delete (`/ui/prompts…`), through the API's own checks.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use minijinja::{context, Value};

use super::{frame, render, see_other, view, FormData, PageError};
use crate::api::prompts::{create_prompt, update_prompt, PromptInput};
use crate::api::session::Session;
use crate::api::ApiState;
use crate::store::JobFilter;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Done {
    done: Option<String>,
}

pub async fn list(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Query(q): Query<Done>,
) -> Result<Response, PageError> {
    let store = st.engine().store();
    let (prompts, jobs) =
        tokio::try_join!(store.list_prompts(), store.list_jobs(JobFilter::default()))?;
    let tz = st.engine().settings().default_timezone;
    render(
        "prompts.html",
        frame(&st, &s, "prompts"),
        context! {
            prompts => prompts.iter().map(|p| context! {
                id => p.id, title => p.title, tags => p.tags,
                size => p.content.chars().count(),
                updated => view::time(p.updated_at, tz),
                jobs => jobs.iter().filter(|j| j.prompt_id.as_deref() == Some(p.id.as_str()))
                    .map(|j| context! { id => j.id, name => j.name }).collect::<Vec<_>>(),
            }).collect::<Vec<_>>(),
            notice => super::jobs::notice(q.done.as_deref()),
        },
    )
}

fn form_page(
    st: &ApiState,
    s: &Session,
    values: Value,
    editing: Option<&str>,
    error: Option<(Option<String>, String)>,
) -> Result<Response, PageError> {
    let failed = error.is_some();
    let mut resp = render(
        "prompt_form.html",
        frame(st, s, "prompts"),
        context! {
            values, editing,
            error_field => error.as_ref().and_then(|e| e.0.clone()),
            error => error.map(|e| e.1),
        },
    )?;
    if failed {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(resp)
}

fn input_of(form: &FormData, id: Option<String>) -> PromptInput {
    PromptInput {
        id,
        title: form.get("title").unwrap_or_default().to_owned(),
        content: form.raw("content").replace("\r\n", "\n"),
        tags: form
            .get("tags")
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
    }
}

/// What the user typed, to show again after an error (nothing is lost).
fn values_of(form: &FormData) -> Value {
    context! {
        id => form.get("id"), title => form.raw("title"),
        content => form.raw("content"), tags => form.raw("tags"),
    }
}

pub async fn new(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
) -> Result<Response, PageError> {
    form_page(&st, &s, context! {}, None, None)
}

pub async fn create(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    form: FormData,
) -> Result<Response, PageError> {
    match create_prompt(&st, input_of(&form, form.get("id").map(str::to_owned))).await {
        Ok(p) => Ok(see_other(&format!(
            "/ui/prompts/{}?done=prompt-saved",
            p.id
        ))),
        Err(e) => form_page(&st, &s, values_of(&form), None, Some((e.field, e.message))),
    }
}

pub async fn edit(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<Done>,
) -> Result<Response, PageError> {
    let Some(p) = st.engine().store().get_prompt(id.clone()).await? else {
        return Err(PageError::NotFound(format!("prompt `{id}`")));
    };
    let values = context! {
        id => p.id, title => p.title, content => p.content, tags => p.tags.join(", "),
        notice => super::jobs::notice(q.done.as_deref()),
    };
    form_page(&st, &s, values, Some(&id), None)
}

pub async fn update(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    form: FormData,
) -> Result<Response, PageError> {
    match update_prompt(&st, &id, input_of(&form, None)).await {
        Ok(p) => Ok(see_other(&format!(
            "/ui/prompts/{}?done=prompt-saved",
            p.id
        ))),
        Err(e) if e.code == "not_found" => Err(PageError::NotFound(format!("prompt `{id}`"))),
        Err(e) => form_page(
            &st,
            &s,
            values_of(&form),
            Some(&id),
            Some((e.field, e.message)),
        ),
    }
}

pub async fn delete(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    st.engine().store().delete_prompt(id).await?;
    Ok(see_other("/ui/prompts?done=prompt-deleted"))
}
