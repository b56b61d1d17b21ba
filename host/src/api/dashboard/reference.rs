//! `/ui/api`: the admin API's reference, rendered on the server from the same OpenAPI document
//! `/api/openapi.json` serves (no script, no CDN): every operation by tag with its parameters,
//! body and answers, then every schema with its fields.

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use minijinja::{context, Value};
use serde_json::Value as Json;

use super::{frame, render, PageError};
use crate::api::session::Session;
use crate::api::ApiState;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const SCHEMA_PREFIX: &str = "#/components/schemas/";

pub async fn page(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
) -> Result<Response, PageError> {
    let doc = serde_json::to_value(crate::api::openapi::openapi())
        .map_err(|e| PageError::Internal(format!("the OpenAPI document: {e}")))?;
    render("api.html", frame(&st, &s, "api"), reference(&doc))
}

/// The page's values from the document.
fn reference(doc: &Json) -> Value {
    let tags: Vec<Value> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tag| {
            let name = tag["name"].as_str().unwrap_or_default();
            context! {
                name,
                description => tag["description"].as_str(),
                operations => operations(doc, name),
            }
        })
        .collect();
    let schemas: Vec<Value> = doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, schema)| {
            context! {
                name,
                description => schema["description"].as_str(),
                fields => fields(schema),
                variants => variants(schema),
                shape => Value::from_safe_string(shape(schema)),
                example => example(schema),
            }
        })
        .collect();
    context! {
        title => doc["info"]["title"].as_str(),
        version => doc["info"]["version"].as_str(),
        description => doc["info"]["description"].as_str(),
        openapi => doc["openapi"].as_str(),
        tags,
        schemas,
    }
}

/// The operations with `tag`, in the document's path order.
fn operations(doc: &Json, tag: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let op = &item[method];
            if op.is_null()
                || !op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == tag))
            {
                continue;
            }
            let open = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            let params: Vec<Value> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    context! {
                        name => p["name"].as_str(),
                        location => p["in"].as_str(),
                        required => p["required"].as_bool().unwrap_or(false),
                        shape => Value::from_safe_string(shape(&p["schema"])),
                        description => p["description"].as_str(),
                    }
                })
                .collect();
            let body = op["requestBody"].as_object().map(|b| {
                let (media, schema) = media(&op["requestBody"]);
                context! {
                    description => b.get("description").and_then(Json::as_str),
                    required => b.get("required").and_then(Json::as_bool).unwrap_or(false),
                    media,
                    shape => Value::from_safe_string(shape(schema)),
                }
            });
            let responses: Vec<Value> = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(status, r)| {
                    let (media, schema) = media(r);
                    context! {
                        status,
                        description => r["description"].as_str(),
                        media,
                        shape => (!schema.is_null()).then(|| Value::from_safe_string(shape(schema))),
                    }
                })
                .collect();
            out.push(context! {
                id => op["operationId"].as_str(),
                method => method.to_uppercase(),
                path,
                summary => op["summary"].as_str(),
                description => op["description"].as_str(),
                open,
                params,
                body,
                responses,
            });
        }
    }
    out
}

/// The first media type of a body or response and its schema.
fn media(holder: &Json) -> (Option<String>, &Json) {
    match holder["content"].as_object().and_then(|c| c.iter().next()) {
        Some((media, content)) => (Some(media.clone()), &content["schema"]),
        None => (None, &Json::Null),
    }
}

/// An object schema's fields: name, shape, whether required, description.
fn fields(schema: &Json) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    let mut out: Vec<Value> = Vec::new();
    // `allOf` (a flattened struct): the parts' fields, in order.
    for part in schema["allOf"].as_array().into_iter().flatten() {
        if part.get("$ref").is_none() {
            out.extend(fields(part));
        }
    }
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        out.push(context! {
            name,
            shape => Value::from_safe_string(shape(field)),
            required => required.contains(&name.as_str()),
            description => field["description"].as_str(),
        });
    }
    out
}

/// The alternatives of a `oneOf` schema that are objects (a tagged enum's variants).
fn variants(schema: &Json) -> Vec<Value> {
    schema["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["properties"].is_object())
        .map(|v| {
            context! {
                description => v["description"].as_str(),
                fields => fields(v),
            }
        })
        .collect()
}

fn example(schema: &Json) -> Option<String> {
    let e = schema
        .get("example")
        .or_else(|| schema["examples"].as_array().and_then(|a| a.first()))?;
    serde_json::to_string_pretty(e).ok()
}

/// A schema as one line of HTML: its type, with links to named schemas.
fn shape(schema: &Json) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = esc(r.strip_prefix(SCHEMA_PREFIX).unwrap_or(r));
        return format!("<a href=\"#schema-{name}\">{name}</a>");
    }
    for (key, sep) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " & ")] {
        if let Some(alts) = schema[key].as_array() {
            return alts.iter().map(shape).collect::<Vec<_>>().join(sep);
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("<code>{}</code>", esc(&v.to_string())))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    let types: Vec<&str> = match &schema["type"] {
        Json::String(t) => vec![t.as_str()],
        Json::Array(ts) => ts.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    if types.is_empty() {
        return if schema
            .as_object()
            .is_some_and(|o| o.contains_key("properties"))
        {
            "object".into()
        } else {
            "any".into()
        };
    }
    types
        .iter()
        .map(|t| match *t {
            "array" => format!("array of {}", shape(&schema["items"])),
            "object" => match &schema["additionalProperties"] {
                Json::Object(_) => {
                    format!("map of string → {}", shape(&schema["additionalProperties"]))
                }
                _ => "object".into(),
            },
            "integer" | "number" => {
                let mut s = t.to_string();
                let (min, max) = (&schema["minimum"], &schema["maximum"]);
                match (min.is_number(), max.is_number()) {
                    (true, true) => s += &format!(" {min}–{max}"),
                    (true, false) => s += &format!(" ≥ {min}"),
                    (false, true) => s += &format!(" ≤ {max}"),
                    _ => {}
                }
                s
            }
            "string" => match schema["format"].as_str() {
                Some(f) => format!("string ({})", esc(f)),
                None => "string".into(),
            },
            other => esc(other),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_name_types_and_link_schemas() {
        assert_eq!(
            shape(&json!({"$ref": "#/components/schemas/Job"})),
            "<a href=\"#schema-Job\">Job</a>"
        );
        assert_eq!(
            shape(&json!({"type": "array", "items": {"type": ["string", "null"]}})),
            "array of string | null"
        );
        assert_eq!(
            shape(&json!({"type": "integer", "minimum": 1, "maximum": 10})),
            "integer 1–10"
        );
        assert_eq!(
            shape(&json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/A<b>"}]})),
            "null | <a href=\"#schema-A&lt;b&gt;\">A&lt;b&gt;</a>"
        );
        assert_eq!(
            shape(&json!({"type": "string", "enum": ["a", "<b>"]})),
            "<code>&quot;a&quot;</code> | <code>&quot;&lt;b&gt;&quot;</code>"
        );
        assert_eq!(shape(&json!({})), "any");
    }

    /// Every operation of the document is on the page, and every schema a shape links to has
    /// its own entry (no dead anchors).
    #[test]
    fn the_page_holds_every_operation_and_every_linked_schema() {
        let doc = serde_json::to_value(crate::api::openapi::openapi()).unwrap();
        let page = reference(&doc);
        let html = super::super::TEMPLATES
            .get_template("api.html")
            .unwrap()
            .render(context! {
                page => context! { nav => "api", assets => super::super::assets::urls() },
                ..page
            })
            .unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in METHODS {
                if let Some(id) = item[m]["operationId"].as_str() {
                    assert!(html.contains(&format!("id=\"op-{id}\"")), "{m} {path}");
                }
            }
        }
        for link in html.split("href=\"#schema-").skip(1) {
            let name = &link[..link.find('"').unwrap()];
            assert!(
                html.contains(&format!("id=\"schema-{name}\"")),
                "a link to {name} without its entry"
            );
        }
        assert!(html.contains("id=\"schema-JobSpec\""));
    }
}
