//! Job templates: a named, parameterised job definition (docs/workflows.md).
//!
//! A template is a job tree (`job:`, any [`JobSpec`] field but `name`) whose *string values*
//! may contain minijinja expressions over the template's declared `vars`. A job made from it
//! names the template, gives the variables, and may replace top-level fields (`overrides`).
//!
//! Rendering never builds YAML or JSON text: each string leaf is rendered on its own (strict
//! undefined, bounded by fuel and an output limit) and put back in the tree as a string, then the
//! tree is deserialized into a [`JobSpec`]. A variable value can therefore never add or change a
//! field, whatever characters it holds.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::manifest::{JobSpec, SpecError};
use crate::model::TemplateUse;

/// Largest rendered job (the sum of its rendered strings), in bytes.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;
/// Minijinja instructions one string may run (loops cannot run away).
pub const RENDER_FUEL: u64 = 100_000;
/// Longest template name.
pub const MAX_NAME_LEN: usize = 100;

/// Top-level job fields that only the job made from a template gives (never the template, never
/// an override).
const RESERVED: &[&str] = &["name", "template", "vars"];

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// A variable value: text. Numbers and booleans written without quotes are taken as their text
/// (`7`, `true`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VarValue(pub String);

impl utoipa::PartialSchema for VarValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        serde_json::from_value(serde_json::json!({
            "description": "A variable's value: text (numbers and booleans are taken as their text)",
            "type": ["string", "number", "boolean"],
            "examples": ["main", 7],
        }))
        .expect("a valid schema")
    }
}

impl utoipa::ToSchema for VarValue {}

impl Serialize for VarValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VarValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = VarValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<VarValue, E> {
                Ok(VarValue(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<VarValue, E> {
                Ok(VarValue(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<VarValue, E> {
                Ok(VarValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Variable values as given (`vars:`), as plain text.
pub fn var_texts(vars: BTreeMap<String, VarValue>) -> BTreeMap<String, String> {
    vars.into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// One variable of a template.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VarDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when the job does not give the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<VarValue>,
    /// Whether a job must give it: default `true` without a `default`, `false` with one. An
    /// optional variable without a default is the empty string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

impl VarDef {
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }
}

/// A template definition: the file shape (`templates/<name>.yaml`) and the API's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "repo-review", "description": "Nightly review of a repository",
    "vars": {"repo": {"description": "The checkout to review"}, "hour": {"default": "2"}},
    "job": {"prompt": "Review the changes in {{ repo }} since yesterday.",
            "schedule": {"type": "cron", "expression": "0 {{ hour }} * * *"},
            "execution": {"working_directory": "{{ repo }}"}}}))]
pub struct TemplateDef {
    /// Default: the file's stem (files) or the path's name (`PUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, VarDef>,
    /// The job: any job field but `name`; string values may use `{{ var }}`.
    #[schema(value_type = Object)]
    pub job: Value,
}

/// What the store keeps of a template besides its name, description and source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateBody {
    pub vars: BTreeMap<String, VarDef>,
    pub job: Value,
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobTemplate {
    pub name: String,
    pub description: Option<String>,
    pub vars: BTreeMap<String, VarDef>,
    /// The job: any job field but `name`; string values may use `{{ var }}`.
    #[schema(value_type = Object)]
    pub job: Value,
    /// The template file that defines it, or `None` for templates made through the API.
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl JobTemplate {
    /// Whether a definition says the same as this stored template.
    pub fn same_as(&self, def: &TemplateDef) -> bool {
        let description = def.description.as_ref().filter(|d| !d.trim().is_empty());
        self.description.as_ref() == description && self.vars == def.vars && self.job == def.job
    }
}

/// Template names: letters, digits, `-`, `_`, `.`; 1–100, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if crate::manifest::is_stem_name(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(err(
            "name",
            format!("`{name}` is not a template name (1–{MAX_NAME_LEN} letters, digits, `-`, `_`, `.`; not starting with `.`)"),
        ))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_keep_trailing_newline(true);
    env.set_recursion_limit(50);
    env
}

fn has_template_syntax(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Calls `f` with the dotted path (`job.execution.environment.HOME`, `job.tags[0]`) of every
/// string leaf.
fn walk_strings<E>(
    v: &mut Value,
    path: &mut String,
    f: &mut impl FnMut(&str, &mut String) -> Result<(), E>,
) -> Result<(), E> {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_strings(item, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                walk_strings(item, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An [`std::io::Write`] that fails once more than `left` bytes were written.
struct Bounded {
    out: Vec<u8>,
    left: usize,
    exceeded: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            self.exceeded = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minijinja error as one line: what, and where in the string.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(l) = e.line() {
        s.push_str(&format!(" (line {l} of the value)"));
    }
    s
}

impl TemplateDef {
    /// Checks a definition named `name`: the name, the variables, that `job` is a mapping without
    /// `name`, and that every string parses and uses only declared variables.
    pub fn check(&self, name: &str) -> Result<(), SpecError> {
        check_name(name)?;
        if let Some(n) = &self.name {
            if n != name {
                return Err(err(
                    "name",
                    format!("`{n}` differs from the template's name `{name}`"),
                ));
            }
        }
        for (k, v) in &self.vars {
            if !is_identifier(k) {
                return Err(err(
                    format!("vars.{k}"),
                    "a variable name is letters, digits and `_`, not starting with a digit",
                ));
            }
            if v.required == Some(true) && v.default.is_some() {
                return Err(err(
                    format!("vars.{k}.required"),
                    "a variable with a `default` is never missing: drop `required` or `default`",
                ));
            }
        }
        let Value::Object(map) = &self.job else {
            return Err(err("job", "must be a mapping of job fields"));
        };
        for r in RESERVED {
            if map.contains_key(*r) {
                return Err(err(
                    format!("job.{r}"),
                    match *r {
                        "name" => {
                            "a template's job has no name: each job made from it gives its own"
                        }
                        _ => "not a job field",
                    },
                ));
            }
        }
        let size = serde_json::to_string(&self.job)
            .map(|s| s.len())
            .unwrap_or(0);
        if size > MAX_RENDERED_BYTES {
            return Err(err(
                "job",
                format!("is larger than {MAX_RENDERED_BYTES} bytes"),
            ));
        }
        let env = environment();
        let globals: HashSet<&str> = env.globals().map(|(n, _)| n).collect();
        let mut job = self.job.clone();
        let mut path = String::from("job");
        walk_strings(&mut job, &mut path, &mut |path, s| {
            if !has_template_syntax(s) {
                return Ok(());
            }
            let t = env
                .template_from_str(s)
                .map_err(|e| err(path, describe(&e)))?;
            let mut unknown: Vec<String> = t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !self.vars.contains_key(v) && !globals.contains(v.as_str()))
                .collect();
            unknown.sort();
            match unknown.first() {
                Some(v) => Err(err(
                    path,
                    format!("uses `{v}`, which is not one of the template's `vars`"),
                )),
                None => Ok(()),
            }
        })
    }

    /// The stored form, named `name` (checked first).
    pub fn into_template(
        self,
        name: &str,
        source: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<JobTemplate, SpecError> {
        self.check(name)?;
        Ok(JobTemplate {
            name: name.to_owned(),
            description: self.description.filter(|d| !d.trim().is_empty()),
            vars: self.vars,
            job: self.job,
            source,
            created_at: now,
            updated_at: now,
        })
    }
}

/// Renders the job `job_name` made from `template` with `usage`'s variables and overrides.
/// Errors name the field: `vars.<name>` for a missing or unknown variable, `job.<path>` for a
/// string of the template that does not render, `overrides.<field>` for a bad override, and the
/// job field otherwise. The result is not validated yet ([`JobSpec::validate`]).
pub fn render(
    template: &JobTemplate,
    job_name: &str,
    usage: &TemplateUse,
) -> Result<JobSpec, SpecError> {
    for k in usage.vars.keys() {
        if !template.vars.contains_key(k) {
            let known: Vec<&str> = template.vars.keys().map(String::as_str).collect();
            return Err(err(
                format!("vars.{k}"),
                format!(
                    "template `{}` has no variable `{k}` (it has: {})",
                    template.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    let mut ctx: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, def) in &template.vars {
        let value = match (usage.vars.get(k), &def.default) {
            (Some(v), _) => v.as_str(),
            (None, Some(d)) => d.0.as_str(),
            (None, None) if def.is_required() => {
                let what = def
                    .description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                return Err(err(
                    format!("vars.{k}"),
                    format!(
                        "missing: template `{}` needs the variable `{k}`{what}",
                        template.name
                    ),
                ));
            }
            (None, None) => "",
        };
        ctx.insert(k.as_str(), value);
    }
    let env = environment();
    let mut job = template.job.clone();
    if !job.is_object() {
        return Err(err("job", "the template's job is not a mapping"));
    }
    let mut left = MAX_RENDERED_BYTES;
    let mut path = String::from("job");
    walk_strings(&mut job, &mut path, &mut |path, s| {
        if !has_template_syntax(s) {
            left = left.checked_sub(s.len()).ok_or_else(|| too_large(path))?;
            return Ok(());
        }
        let t = env
            .template_from_str(s)
            .map_err(|e| err(path, describe(&e)))?;
        let mut out = Bounded {
            out: Vec::new(),
            left,
            exceeded: false,
        };
        match t.render_captured_to(&ctx, &mut out) {
            Ok(_) => {}
            Err(_) if out.exceeded => return Err(too_large(path)),
            Err(e) => return Err(err(path, describe(&e))),
        }
        left = out.left;
        *s = String::from_utf8(out.out).map_err(|_| err(path, "rendered text is not UTF-8"))?;
        Ok(())
    })?;
    let Value::Object(map) = &mut job else {
        unreachable!("checked above");
    };
    for (k, v) in &usage.overrides {
        if RESERVED.contains(&k.as_str()) {
            return Err(err(format!("overrides.{k}"), "cannot be overridden"));
        }
        // One prompt replaces the other kind.
        if k == "prompt" || k == "prompt_id" {
            map.remove("prompt");
            map.remove("prompt_id");
        }
        map.insert(k.clone(), v.clone());
    }
    map.insert("name".into(), Value::String(job_name.to_owned()));
    serde_path_to_error::deserialize::<_, JobSpec>(job).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = match path.as_str() {
            "." | "" => unknown_field(&inner).unwrap_or_else(|| "job".into()),
            p => p.to_owned(),
        };
        err(field, inner)
    })
}

fn too_large(path: &str) -> SpecError {
    err(
        path,
        format!("the rendered job is larger than {MAX_RENDERED_BYTES} bytes"),
    )
}

/// The field an "unknown field `x`" / "missing field `x`" message names.
fn unknown_field(message: &str) -> Option<String> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
}

/// Reads a template file (`templates/<name>.yaml`): its name is its `name:` or the file's stem.
pub fn parse_template_file(
    text: &str,
    path: &std::path::Path,
) -> Result<(String, TemplateDef), crate::manifest::ManifestError> {
    let fail = |line: Option<usize>, message: String| crate::manifest::ManifestError {
        path: path.to_owned(),
        line,
        message,
    };
    let def: TemplateDef = serde_yaml_ng::from_str(text)
        .map_err(|e| fail(e.location().map(|l| l.line()), e.to_string()))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = def.name.clone().unwrap_or(stem);
    def.check(&name).map_err(|e| {
        let key = e.field.rsplit(['.', '[']).next().unwrap_or("");
        let line = text
            .lines()
            .position(|l| {
                let t = l.trim_start().trim_start_matches("- ");
                !key.is_empty()
                    && (t.starts_with(&format!("{key}:")) || l.contains(&format!(" {key}: ")))
            })
            .map(|i| i + 1);
        fail(line, format!("template `{name}`: {e}"))
    })?;
    Ok((name, def))
}

/// The template files of a folder (`*.yaml`, `*.yml`), by name.
pub fn template_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    crate::manifest::manifest_files(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> JobTemplate {
        let (name, def) =
            parse_template_file(yaml, std::path::Path::new("templates/review.yaml")).unwrap();
        def.into_template(&name, None, Utc::now()).unwrap()
    }

    fn usage(vars: &[(&str, &str)]) -> TemplateUse {
        TemplateUse {
            name: "review".into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: BTreeMap::new(),
        }
    }

    const REVIEW: &str = r#"
description: Review a branch
vars:
  repo: { description: "the checkout to review" }
  branch: { default: main }
  note: { required: false }
job:
  prompt: "Review {{ branch }} of {{ repo }}.{{ note }}"
  schedule: { type: cron, expression: "0 2 * * *" }
  priority: 7
  tags: [review, "{{ branch }}"]
  execution:
    working_directory: "{{ repo }}"
    environment: { BRANCH: "{{ branch | upper }}" }
"#;

    #[test]
    fn renders_every_string_with_defaults() {
        let t = template(REVIEW);
        assert_eq!(t.name, "review");
        let spec = render(&t, "r1", &usage(&[("repo", "/src/x")])).unwrap();
        assert_eq!(spec.name, "r1");
        assert_eq!(spec.prompt.as_deref(), Some("Review main of /src/x."));
        assert_eq!(spec.tags, vec!["review", "main"]);
        assert_eq!(spec.priority, 7);
        assert_eq!(spec.execution.working_directory.as_deref(), Some("/src/x"));
        assert_eq!(spec.execution.environment["BRANCH"], "MAIN");
        spec.validate(chrono_tz::UTC).unwrap();
        let spec = render(&t, "r2", &usage(&[("repo", "/y"), ("branch", "dev")])).unwrap();
        assert_eq!(spec.prompt.as_deref(), Some("Review dev of /y."));
    }

    #[test]
    fn a_missing_required_variable_is_named() {
        let e = render(&template(REVIEW), "r", &usage(&[("branch", "x")])).unwrap_err();
        assert_eq!(e.field, "vars.repo");
        assert!(e.message.contains("missing"), "{e}");
        assert!(e.message.contains("the checkout to review"), "{e}");
    }

    #[test]
    fn an_unknown_variable_is_named() {
        let e = render(
            &template(REVIEW),
            "r",
            &usage(&[("repo", "x"), ("brnch", "y")]),
        )
        .unwrap_err();
        assert_eq!(e.field, "vars.brnch");
        assert!(e.message.contains("branch, note, repo"), "{e}");
    }

    #[test]
    fn undeclared_names_and_syntax_errors_are_caught_when_the_template_loads() {
        let path = std::path::Path::new("templates/t.yaml");
        let e = parse_template_file(
            "vars: { repo: {} }\njob:\n  prompt: \"{{ repo }} {{ branch }}\"\n",
            path,
        )
        .unwrap_err();
        assert!(e.message.contains("job.prompt"), "{e}");
        assert!(e.message.contains("`branch`"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse_template_file("job:\n  prompt: \"{{ oops \"\n", path).unwrap_err();
        assert!(e.message.contains("job.prompt"), "{e}");
        let e = parse_template_file("job: { name: x, prompt: p }\n", path).unwrap_err();
        assert!(e.message.contains("job.name"), "{e}");
        let e = parse_template_file(
            "vars: { a: { default: x, required: true } }\njob: {prompt: p}\n",
            path,
        )
        .unwrap_err();
        assert!(e.message.contains("vars.a.required"), "{e}");
        let e = parse_template_file("job: {prompt: p}\nextra: 1\n", path).unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        assert_eq!(e.line, Some(2));
        // Filters and globals are not variables.
        parse_template_file(
            "vars: { n: {} }\njob:\n  prompt: \"{% for i in range(3) %}{{ n | upper }}{% endfor %}\"\n",
            path,
        )
        .unwrap();
    }

    #[test]
    fn strict_undefined_fails_instead_of_rendering_nothing() {
        // Bypass the load-time check to reach the renderer with an undeclared name.
        let mut t = template(REVIEW);
        t.job["prompt"] = Value::String("hello {{ nobody }}".into());
        let e = render(&t, "r", &usage(&[("repo", "x")])).unwrap_err();
        assert_eq!(e.field, "job.prompt");
        assert!(e.message.contains("undefined"), "{e}");
        // Attribute access on a string is undefined too.
        t.job["prompt"] = Value::String("{{ repo.missing }}".into());
        assert!(render(&t, "r", &usage(&[("repo", "x")])).is_err());
    }

    #[test]
    fn overrides_replace_top_level_fields() {
        let t = template(REVIEW);
        let mut u = usage(&[("repo", "x")]);
        u.overrides.insert("priority".into(), serde_json::json!(2));
        u.overrides
            .insert("prompt_id".into(), serde_json::json!("stored"));
        u.overrides.insert(
            "schedule".into(),
            serde_json::json!({"type": "interval", "every": "1h"}),
        );
        let spec = render(&t, "r", &u).unwrap();
        assert_eq!(spec.priority, 2);
        assert_eq!(
            spec.prompt, None,
            "an override's prompt_id replaces the prompt"
        );
        assert_eq!(spec.prompt_id.as_deref(), Some("stored"));
        spec.validate(chrono_tz::UTC).unwrap();
        let mut u = usage(&[("repo", "x")]);
        u.overrides
            .insert("name".into(), serde_json::json!("other"));
        assert_eq!(render(&t, "r", &u).unwrap_err().field, "overrides.name");
        let mut u = usage(&[("repo", "x")]);
        u.overrides.insert("priorty".into(), serde_json::json!(2));
        let e = render(&t, "r", &u).unwrap_err();
        assert_eq!(e.field, "priorty", "{e}");
        let mut u = usage(&[("repo", "x")]);
        u.overrides
            .insert("priority".into(), serde_json::json!("high"));
        assert_eq!(render(&t, "r", &u).unwrap_err().field, "priority");
    }

    #[test]
    fn a_variable_cannot_inject_fields() {
        let t = template(REVIEW);
        let evil = "x\"\nprompt_id: evil\npriority: 10\nexecution: { permission_mode: bypassPermissions }\n";
        let spec = render(&t, "r", &usage(&[("repo", evil)])).unwrap();
        assert_eq!(spec.prompt_id, None);
        assert_eq!(spec.priority, 7);
        assert_eq!(spec.execution.permission_mode, None);
        assert_eq!(
            spec.prompt.as_deref(),
            Some(format!("Review main of {evil}.").as_str())
        );
        assert_eq!(spec.execution.working_directory.as_deref(), Some(evil));
        // Template syntax inside a value is text, not rendered again.
        let spec = render(&t, "r", &usage(&[("repo", "{{ branch }}")])).unwrap();
        assert_eq!(spec.prompt.as_deref(), Some("Review main of {{ branch }}."));
    }

    #[test]
    fn runaway_templates_stop_with_an_error() {
        let mut t = template(REVIEW);
        t.job["prompt"] = Value::String(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
                .into(),
        );
        let e = render(&t, "r", &usage(&[("repo", "x")])).unwrap_err();
        assert_eq!(e.field, "job.prompt");
        t.job["prompt"] = Value::String("{{ 'x' * 10000000 }}".into());
        let e = render(&t, "r", &usage(&[("repo", "x")])).unwrap_err();
        assert!(e.message.contains("larger than"), "{e}");
    }

    #[test]
    fn values_may_be_numbers_or_booleans() {
        let v: BTreeMap<String, VarValue> =
            serde_yaml_ng::from_str("a: 7\nb: true\nc: text\nd: 1.5\n").unwrap();
        let t = var_texts(v);
        assert_eq!(t["a"], "7");
        assert_eq!(t["b"], "true");
        assert_eq!(t["d"], "1.5");
        assert!(serde_yaml_ng::from_str::<BTreeMap<String, VarValue>>("a: [1]\n").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("nightly-review").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(".x").is_err());
        assert!(check_name("a/b").is_err());
    }
}
