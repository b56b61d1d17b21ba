//! `/api/templates…`: job templates, and jobs made from them (docs/workflows.md).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson};
use super::{ApiState, ListParams, Page};
use crate::job_template::{JobTemplate, TemplateDef, VarValue};
use crate::model::Job;
use crate::service::templates as svc;

/// A template as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    #[serde(flatten)]
    pub template: JobTemplate,
    /// The jobs made from it, by name.
    pub jobs: Vec<String>,
    /// After `PUT`: the jobs whose definition changed (re-rendered, history kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerendered: Option<Vec<String>>,
}

/// Body of `POST /api/templates/{name}/instantiate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "review-api", "vars": {"repo": "/srv/api"}, "overrides": {"priority": 8}}))]
pub struct InstantiateRequest {
    /// The new job's name.
    pub name: String,
    /// Variable values (strings; numbers and booleans are taken as their text).
    #[serde(default)]
    pub vars: BTreeMap<String, VarValue>,
    /// Top-level job fields that replace the template's (`priority`, `schedule`, …).
    #[serde(default)]
    pub overrides: BTreeMap<String, serde_json::Value>,
}

/// A template as the API shows it: secrets in its job (webhook URLs, tokens …) replaced by
/// `<redacted>` (a `PUT` that sends them back keeps the stored values).
fn redacted(mut t: JobTemplate) -> JobTemplate {
    crate::redact::redact_value(&mut t.job);
    t
}

async fn view(st: &ApiState, template: JobTemplate) -> Result<TemplateView, ApiError> {
    let template = redacted(template);
    let jobs = st
        .engine()
        .store()
        .jobs_of_template(template.name.clone())
        .await?
        .into_iter()
        .map(|j| j.name)
        .collect();
    Ok(TemplateView {
        template,
        jobs,
        rerendered: None,
    })
}

#[utoipa::path(get, path = "/api/templates", operation_id = "listTemplates", tag = "templates",
    params(
        ("limit" = Option<u32>, Query, description = "1–1000, default 50"),
        ("offset" = Option<u32>, Query, description = "Default 0"),
    ),
    responses((status = 200, description = "A page of templates, by name, each with the jobs made from it", body = Page<TemplateView>)))]
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListParams>,
) -> Result<Json<Page<TemplateView>>, ApiError> {
    let (limit, offset) = q.page()?;
    let all = st.engine().store().list_templates().await?;
    let mut users = svc::template_users(st.engine()).await?;
    Ok(Json(Page::of(all, limit, offset, |t| TemplateView {
        jobs: users.remove(&t.name).unwrap_or_default(),
        template: redacted(t),
        rerendered: None,
    })))
}

#[utoipa::path(post, path = "/api/templates", operation_id = "createTemplate", tag = "templates",
    request_body = TemplateDef,
    responses(
        (status = 201, description = "The created template", body = TemplateView),
        (status = 409, description = "A template with that name exists", body = super::ErrorBody),
        (status = 422, description = "Invalid template; `field` names the offending field", body = super::ErrorBody),
    ))]
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(def): ApiJson<TemplateDef>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let t = svc::create_template(st.engine(), def).await?;
    Ok((StatusCode::CREATED, Json(view(&st, t).await?)))
}

#[utoipa::path(get, path = "/api/templates/{name}", operation_id = "getTemplate", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 404, description = "No such template", body = super::ErrorBody),
    ))]
pub async fn show(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    match st.engine().store().get_template(name.clone()).await? {
        Some(t) => Ok(Json(view(&st, t).await?)),
        None => Err(ApiError::not_found("template", &name)),
    }
}

#[utoipa::path(put, path = "/api/templates/{name}", operation_id = "updateTemplate", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    request_body = TemplateDef,
    responses(
        (status = 200, description = "The updated template; `rerendered` lists the jobs made from it that changed", body = TemplateView),
        (status = 404, description = "No such template", body = super::ErrorBody),
        (status = 409, description = "The template belongs to a template file", body = super::ErrorBody),
        (status = 422, description = "Invalid template, or a job made from it would not render with it (nothing changed)", body = super::ErrorBody),
    ))]
pub async fn update(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(def): ApiJson<TemplateDef>,
) -> Result<Json<TemplateView>, ApiError> {
    let u = svc::update_template(st.engine(), &name, def).await?;
    let mut v = view(&st, u.template).await?;
    v.rerendered = Some(u.rerendered);
    Ok(Json(v))
}

#[utoipa::path(delete, path = "/api/templates/{name}", operation_id = "deleteTemplate", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such template", body = super::ErrorBody),
        (status = 409, description = "Jobs are made from it, or it belongs to a template file", body = super::ErrorBody),
    ))]
pub async fn delete(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    svc::delete_template(st.engine(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/templates/{name}/instantiate", operation_id = "instantiateTemplate", tag = "templates",
    params(("name" = String, Path, description = "Template name")),
    request_body = InstantiateRequest,
    responses(
        (status = 201, description = "The job made from the template (re-rendered when the template changes)", body = Job),
        (status = 404, description = "No such template", body = super::ErrorBody),
        (status = 409, description = "A job with that name exists", body = super::ErrorBody),
        (status = 422, description = "A missing or unknown variable (`field`: `vars.<name>`), or the rendered job is invalid", body = super::ErrorBody),
    ))]
pub async fn instantiate(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<InstantiateRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = svc::instantiate(
        st.engine(),
        &name,
        &req.name,
        crate::job_template::var_texts(req.vars),
        req.overrides,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(job.redacted())))
}
