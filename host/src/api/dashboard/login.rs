//! `/ui/login` and `/ui/logout`.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use minijinja::context;

use super::{assets, see_other, FormData, PageError, TEMPLATES};
use crate::api::session::{self, Session};
use crate::api::ApiState;

#[derive(serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path of this dashboard: never another site (`//evil`, `https://…`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

fn login_page(st: &ApiState, next: &str, error: Option<&str>) -> Result<Response, PageError> {
    let s = st.dashboard();
    let html = TEMPLATES
        .get_template("login.html")
        .and_then(|t| {
            t.render(context! {
                next, error,
                password => s.password.is_some(),
                token_file => s.token_file.as_ref().map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the api-token file".into()),
                page => context! { assets => assets::urls() },
            })
        })
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let status = if error.is_some() {
        axum::http::StatusCode::UNAUTHORIZED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, axum::response::Html(html)).into_response())
}

pub async fn page(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<Next>,
) -> Result<Response, PageError> {
    let next = safe_next(q.next.as_deref());
    if session::from_headers(&st, &headers).await.is_some() {
        return Ok(see_other(&next));
    }
    login_page(&st, &next, None)
}

pub async fn submit(
    State(st): State<ApiState>,
    headers: HeaderMap,
    form: FormData,
) -> Result<Response, PageError> {
    if !session::same_origin(&headers) {
        return Err(PageError::Forbidden(
            "the form was sent from another site".into(),
        ));
    }
    let next = safe_next(form.get("next"));
    let secret = form.get("secret").unwrap_or_default();
    let s = st.dashboard();
    let ok = st.token().matches(secret) || s.password.as_ref().is_some_and(|p| p.matches(secret));
    if !ok {
        // A wrong guess costs the guesser time (the token itself is 256 random bits).
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        tracing::warn!("dashboard: a login with a wrong token or password was refused");
        return login_page(
            &st,
            &next,
            Some("That is not the API token or the dashboard password."),
        );
    }
    let (_, cookie) = session::create(&st, session::is_https(&headers))
        .await
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let mut resp = see_other(&next);
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

pub async fn logout(State(st): State<ApiState>, Extension(s): Extension<Session>) -> Response {
    let cookie = session::end(&st, &s).await;
    let mut resp = see_other("/ui/login");
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/jobs/x?a=1")), "/ui/jobs/x?a=1");
        assert_eq!(safe_next(Some("//evil.example/ui/")), "/ui/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui/");
        assert_eq!(safe_next(Some("/api/jobs")), "/ui/");
        assert_eq!(safe_next(None), "/ui/");
    }
}
