//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use super::{
    backup, budget, cooldown, costs, error, executions, hooks, jobs, notifications, prompts,
    system, templates, workflows, ws,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cnp admin API",
        description = "Jobs, executions, prompts, job templates, plugins and monitoring of a cnp service. \
                       Every route but `GET /api/jobs/health` needs `Authorization: Bearer <token>` \
                       (the token is in the `api-token` file). See docs/api.md."
    ),
    paths(
        jobs::create, jobs::list, jobs::show, jobs::update, jobs::delete, jobs::execute,
        jobs::pause, jobs::resume, jobs::executions, hooks::receive,
        executions::list, executions::show, executions::cancel, executions::logs,
        notifications::of_execution, notifications::recent,
        prompts::list, prompts::create, prompts::show, prompts::update, prompts::delete,
        templates::list, templates::create, templates::show, templates::update, templates::delete,
        templates::instantiate,
        system::stats, system::daily, system::health, system::metrics_json, system::metrics_prometheus,
        system::plugins, system::status, cooldown::show, cooldown::clear,
        budget::show, budget::set, budget::reset,
        backup::create,
        workflows::list, workflows::show, workflows::cancel,
        costs::report,
        ws::upgrade, serve,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail,
        crate::store::CostReport, crate::store::CostWindow, crate::store::CostJobRef,
        crate::store::CostByJob, crate::store::CostByDay,
    )),
    modifiers(&BearerAuth, &CommonResponses),
    tags(
        (name = "jobs", description = "Job definitions, runs on demand, pause and resume"),
        (name = "executions", description = "Runs: history, detail, cancel, logs"),
        (name = "prompts", description = "Stored prompts that jobs refer to"),
        (name = "templates", description = "Job templates and the jobs made from them"),
        (name = "plugins", description = "Loaded WebAssembly plugins (read-only)"),
        (name = "monitoring", description = "Statistics, health, metrics, status, live updates, backups"),
        (name = "workflows", description = "Passes of jobs started by their upstreams (depends_on)"),
        (name = "costs", description = "What runs cost, as the Claude CLI reported it (totals, top spenders, per day), and the spending caps (budgets) that hold runs back"),
    )
)]
struct ApiDoc;

/// Bearer-token security, required by default on every operation.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The answers every operation of a kind can give, added where an operation does not list
/// them itself: 401/403 where the token is needed; 400 (a malformed path, query or JSON body)
/// where there are parameters or a body; 422 (a value out of range, a field of the wrong
/// shape) where there is a query or a body; 413 where there is a body; 503 (shutting down, or
/// the database cannot be written) on operations that change something.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, writes) in ops {
                let Some(op) = op.as_mut() else { continue };
                let open = op.security.as_ref().is_some_and(|reqs| {
                    reqs.iter()
                        .all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
                });
                let params = op.parameters.as_deref().unwrap_or_default();
                let query = params
                    .iter()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let body = op.request_body.is_some();
                let mut add = |code: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description));
                };
                if !open {
                    add(
                        "401",
                        "No token, or a wrong one (`WWW-Authenticate: Bearer`)",
                    );
                    add(
                        "403",
                        "A dashboard session cookie from another origin, or a write without its CSRF header",
                    );
                }
                if !params.is_empty() || body {
                    add(
                        "400",
                        "A malformed request: a path or query that does not decode, or a body that is not JSON",
                    );
                }
                if query || body {
                    add(
                        "422",
                        "A value of the wrong shape or out of range; `field` names it",
                    );
                }
                if body {
                    add("413", "The body is larger than `api.max_body_bytes`");
                }
                if writes {
                    add(
                        "503",
                        "The service is shutting down, or the database cannot be written now (nothing was changed)",
                    );
                }
            }
        }
    }
}

/// The document.
pub fn openapi() -> Document {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

#[utoipa::path(get, path = "/api/openapi.json", operation_id = "getOpenApi", tag = "monitoring",
    responses((status = 200, description = "This OpenAPI document", body = Object)))]
pub async fn serve() -> Json<Document> {
    Json(openapi())
}

#[cfg(test)]
mod tests {

    /// The routes `router()` registers (read from its source: every `.route(path, methods)`),
    /// as (path, method) pairs.
    fn router_routes() -> std::collections::BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let body = &src[src.find("pub fn router(").expect("router()")..];
        let body = &body[..body.find(".fallback(").expect("the router's fallback")];
        let mut out = std::collections::BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let chunk = chunk.split(".merge(").next().unwrap_or(chunk);
            let first = chunk.trim_start();
            let path = if let Some(rest) = first.strip_prefix('"') {
                rest[..rest.find('"').unwrap()].to_owned()
            } else if first.starts_with("HEALTH_PATH") {
                super::super::HEALTH_PATH.to_owned()
            } else if first.starts_with("WS_PATH") {
                super::super::WS_PATH.to_owned()
            } else {
                panic!("a route whose path this test cannot read: {first:.60}");
            };
            for m in ["get", "post", "put", "delete", "patch"] {
                let called = chunk.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0
                        || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && chunk.as_bytes()[i - 1] != b'_'
                });
                if called {
                    out.insert((path.clone(), m.to_owned()));
                }
            }
        }
        out
    }

    /// Every route of the router is in the document with its methods, and the document has no
    /// route the router lacks: the auth test that walks the document covers the whole router.
    #[test]
    fn document_and_router_agree() {
        let router = router_routes();
        assert!(router.len() > 30, "{router:?}");
        let doc = super::openapi();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let v = serde_json::to_value(item).unwrap();
            for m in ["get", "post", "put", "delete", "patch"] {
                if v.get(m).is_some() {
                    documented.insert((path.clone(), m.to_owned()));
                }
            }
        }
        let undocumented: Vec<_> = router.difference(&documented).collect();
        let phantom: Vec<_> = documented.difference(&router).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            phantom.is_empty(),
            "documented routes the router lacks: {phantom:?}"
        );
    }
    #[test]
    fn document_lists_every_route() {
        let doc = super::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/api/jobs",
            "/api/jobs/{id}",
            "/api/jobs/{id}/execute",
            "/api/jobs/{id}/pause",
            "/api/jobs/{id}/resume",
            "/api/jobs/{id}/executions",
            "/api/executions",
            "/api/executions/{id}",
            "/api/executions/{id}/cancel",
            "/api/executions/{id}/logs",
            "/api/executions/{id}/notifications",
            "/api/notifications",
            "/api/jobs/stats",
            "/api/costs",
            "/api/jobs/health",
            "/api/jobs/metrics",
            "/metrics",
            "/api/prompts",
            "/api/prompts/{id}",
            "/api/templates",
            "/api/templates/{name}",
            "/api/templates/{name}/instantiate",
            "/api/plugins",
            "/api/status",
            "/api/cooldown",
            "/api/cooldown/clear",
            "/api/backup",
            "/api/openapi.json",
            "/api/ws",
        ] {
            assert!(
                doc.paths.paths.contains_key(p),
                "{p} missing from {paths:?}"
            );
        }
    }
}
