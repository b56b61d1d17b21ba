//! The dashboard's static files, built into the binary. URLs carry a hash of the content
//! (`/ui/assets/app.css?v=…`), so browsers may keep them for a year and still never run a stale
//! copy after an upgrade.

use std::sync::LazyLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

const FILES: &[Asset] = &[
    Asset {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("static/app.css"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("static/app.js"),
    },
    Asset {
        name: "stats.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("static/stats.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("static/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("static/vendor/uPlot.min.css"),
    },
    Asset {
        name: "favicon.svg",
        mime: "image/svg+xml",
        body: include_bytes!("static/favicon.svg"),
    },
];

/// Each file's content hash (first 12 hex digits).
static HASHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|a| hex::encode(&Sha256::digest(a.body)[..6]))
        .collect()
});

/// `{"app_css": "/ui/assets/app.css?v=…", …}` for templates.
pub fn urls() -> minijinja::Value {
    let map: std::collections::BTreeMap<String, String> = FILES
        .iter()
        .zip(HASHES.iter())
        .map(|(a, h)| {
            (
                a.name.replace(['.', '-'], "_"),
                format!("/ui/assets/{}?v={h}", a.name),
            )
        })
        .collect();
    minijinja::Value::from_serialize(&map)
}

#[derive(serde::Deserialize)]
pub struct Version {
    v: Option<String>,
}

pub async fn serve(Path(file): Path<String>, Query(q): Query<Version>) -> Response {
    let Some((i, a)) = FILES.iter().enumerate().find(|(_, a)| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let cache = if q.v.as_deref() == Some(HASHES[i].as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(a.mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        a.body,
    )
        .into_response()
}
