//! Job templates in the service: the `templates/` folder of the manifest folder, the API's
//! template operations, and re-rendering the jobs made from a template when it changes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::engine::{Engine, EngineError};
use crate::job_template::{self, JobTemplate, TemplateDef};
use crate::manifest::{JobSpec, SpecError};
use crate::model::{Job, TemplateUse};

/// Renders and validates the job `job_name` from `template`.
pub fn render_job(
    engine: &Engine,
    template: &JobTemplate,
    job_name: &str,
    usage: &TemplateUse,
) -> Result<JobSpec, SpecError> {
    let spec = job_template::render(template, job_name, usage)?;
    spec.validate(engine.settings().default_timezone)?;
    Ok(spec.normalized())
}

/// Renders `job` again from `template` (its stored variables and overrides) and updates it when
/// its definition changed. `Ok(true)`: updated; `Ok(false)`: nothing to do.
async fn rerender(engine: &Engine, job: &Job, template: &JobTemplate) -> Result<bool, String> {
    let Some(usage) = &job.template else {
        return Ok(false);
    };
    let spec = render_job(engine, template, &job.name, usage).map_err(|e| e.to_string())?;
    if super::same_definition(job, &spec) {
        return Ok(false);
    }
    engine
        .update_job_as(&job.id, spec, None, Some(usage.clone()))
        .await
        .map(|_| true)
        .map_err(|e| super::strip_invalid(&e))
}

/// A line for the log and the manifest status about a job that could not be re-rendered.
fn job_error(job: &Job, template: &str, e: &str) -> String {
    match &job.source {
        Some(file) => format!("{file}: job `{}` (template `{template}`): {e}", job.name),
        None => format!("job `{}` (template `{template}`): {e}", job.name),
    }
}

/// Re-renders every job made from `template`; jobs owned by a file directly in `skip_dir` are
/// left to that file's sync. Returns the updated jobs' names and the errors (a job that fails
/// keeps its last good definition).
pub async fn rerender_template_jobs(
    engine: &Engine,
    template: &JobTemplate,
    skip_dir: Option<&Path>,
) -> (Vec<String>, Vec<String>) {
    let (mut updated, mut errors) = (Vec::new(), Vec::new());
    let jobs = match engine.store().jobs_of_template(template.name.clone()).await {
        Ok(j) => j,
        Err(e) => {
            errors.push(format!(
                "cannot list the jobs of template `{}`: {e}",
                template.name
            ));
            return (updated, errors);
        }
    };
    for job in jobs {
        let owned_by_dir = job
            .source
            .as_deref()
            .is_some_and(|s| skip_dir.is_some_and(|d| Path::new(s).parent() == Some(d)));
        if owned_by_dir {
            continue;
        }
        match rerender(engine, &job, template).await {
            Ok(true) => {
                tracing::info!(job = %job.name, template = %template.name, "job re-rendered from its template");
                updated.push(job.name.clone());
            }
            Ok(false) => {}
            Err(e) => errors.push(job_error(&job, &template.name, &e)),
        }
    }
    (updated, errors)
}

/// Loads `templates/*.yaml` into the store (a file that fails keeps its template's last good
/// version). Returns the names of the templates the files define, by file.
pub(super) async fn sync_template_files(
    engine: &Engine,
    dir: &Path,
    errors: &mut Vec<String>,
) -> HashMap<String, Option<String>> {
    // file → the name it defines (None: the file failed this time)
    let mut by_file: HashMap<String, Option<String>> = HashMap::new();
    let files = match job_template::template_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return by_file,
        Err(e) => {
            errors.push(format!("{}: cannot read folder: {e}", dir.display()));
            return by_file;
        }
    };
    let mut names: HashMap<String, String> = HashMap::new();
    for path in files {
        let source = super::source_of(&path);
        by_file.insert(source.clone(), None);
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                job_template::parse_template_file(&text, &path).map_err(|e| e.to_string())
            });
        let (name, def) = match parsed {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(other) = names.get(&name) {
            errors.push(format!(
                "{}: template `{name}`: name: already defined by {other}",
                path.display()
            ));
            continue;
        }
        names.insert(name.clone(), source.clone());
        let existing = match engine.store().get_template(name.clone()).await {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        if let Some(t) = &existing {
            if t.source.as_deref() != Some(source.as_str()) {
                let owner = t
                    .source
                    .as_deref()
                    .map(|s| format!("defined in {s}"))
                    .unwrap_or_else(|| "made through the API".into());
                errors.push(format!(
                    "{}: template `{name}`: name: already used by a template {owner}",
                    path.display()
                ));
                continue;
            }
            if t.same_as(&def) {
                by_file.insert(source, Some(name));
                continue;
            }
        }
        let now = engine.clock().now();
        let template = match def.into_template(&name, Some(source.clone()), now) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: template `{name}`: {e}", path.display()));
                continue;
            }
        };
        match engine.store().upsert_template(template).await {
            Ok(_) => {
                tracing::info!(template = %name, file = %path.display(), "template loaded");
                by_file.insert(source, Some(name));
            }
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    by_file
}

/// Drops the stored templates whose file in `dir` is gone (or now defines another name). One
/// that jobs are still made from stays, with an error, until no job uses it.
pub(super) async fn remove_stale_templates(
    engine: &Engine,
    dir: &Path,
    by_file: &HashMap<String, Option<String>>,
    errors: &mut Vec<String>,
) {
    let templates = match engine.store().list_templates().await {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("cannot list templates: {e}"));
            return;
        }
    };
    for t in templates {
        let Some(source) = t.source.as_deref() else {
            continue;
        };
        if Path::new(source).parent() != Some(dir) {
            continue;
        }
        let stale = match by_file.get(source) {
            None => true,                        // the file is gone
            Some(None) => false,                 // the file failed: keep the last good version
            Some(Some(name)) => name != &t.name, // the file now defines another template
        };
        if !stale {
            continue;
        }
        match engine.store().jobs_of_template(t.name.clone()).await {
            Ok(jobs) if !jobs.is_empty() => {
                let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
                errors.push(format!(
                    "{source}: template `{}` is no longer defined by this file, but job(s) {} \
                     are made from it: it stays in force until no job uses it",
                    t.name,
                    names.join(", ")
                ));
            }
            Ok(_) => match engine.store().delete_template(t.name.clone()).await {
                Ok(()) => tracing::info!(template = %t.name, "template removed"),
                Err(e) => errors.push(format!("cannot delete template `{}`: {e}", t.name)),
            },
            Err(e) => errors.push(format!(
                "cannot list the jobs of template `{}`: {e}",
                t.name
            )),
        }
    }
}

/// Re-renders the jobs made through the API from a template (jobs of manifest files are
/// re-rendered by their file's sync). Returns the updated names.
pub(super) async fn rerender_api_jobs(engine: &Engine, errors: &mut Vec<String>) -> Vec<String> {
    let mut updated = Vec::new();
    let jobs = match engine
        .store()
        .list_jobs(crate::store::JobFilter::default())
        .await
    {
        Ok(j) => j,
        Err(e) => {
            errors.push(format!("cannot list jobs: {e}"));
            return updated;
        }
    };
    let mut cache: HashMap<String, Option<JobTemplate>> = HashMap::new();
    for job in jobs
        .into_iter()
        .filter(|j| j.source.is_none() && j.template.is_some())
    {
        let name = job
            .template
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let template = match cache.get(&name) {
            Some(t) => t.clone(),
            None => {
                let t = engine
                    .store()
                    .get_template(name.clone())
                    .await
                    .ok()
                    .flatten();
                cache.insert(name.clone(), t.clone());
                t
            }
        };
        let Some(template) = template else {
            errors.push(job_error(&job, &name, "the template no longer exists"));
            continue;
        };
        match rerender(engine, &job, &template).await {
            Ok(true) => updated.push(job.name.clone()),
            Ok(false) => {}
            Err(e) => errors.push(job_error(&job, &name, &e)),
        }
    }
    updated
}

/// A template looked up once per sync.
pub(super) struct TemplateCache(HashMap<String, Option<JobTemplate>>);

impl TemplateCache {
    pub fn new() -> Self {
        TemplateCache(HashMap::new())
    }

    pub async fn get(
        &mut self,
        engine: &Engine,
        name: &str,
    ) -> Result<Option<JobTemplate>, String> {
        if let Some(t) = self.0.get(name) {
            return Ok(t.clone());
        }
        let t = engine
            .store()
            .get_template(name.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        self.0.insert(name.to_owned(), t.clone());
        Ok(t)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> EngineError {
    EngineError::Invalid(SpecError {
        field: field.into(),
        message: message.into(),
    })
}

/// Stores a new template made through the API.
pub async fn create_template(
    engine: &Engine,
    def: TemplateDef,
) -> Result<JobTemplate, EngineError> {
    let Some(name) = def.name.clone() else {
        return Err(invalid("name", "a template needs a name"));
    };
    let template = def.into_template(&name, None, engine.clock().now())?;
    if engine.store().get_template(name.clone()).await?.is_some() {
        return Err(EngineError::Conflict(format!(
            "a template `{name}` already exists"
        )));
    }
    Ok(engine.store().upsert_template(template).await?)
}

/// What changed when a template was replaced.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TemplateUpdate {
    #[schema(value_type = Object)]
    pub template: JobTemplate,
    /// The jobs made from it whose definition changed (re-rendered, history kept).
    pub rerendered: Vec<String>,
}

/// Replaces a template made through the API and re-renders its jobs. Nothing changes when any
/// of its jobs would not render with the new version (the error names the job).
pub async fn update_template(
    engine: &Engine,
    name: &str,
    def: TemplateDef,
) -> Result<TemplateUpdate, EngineError> {
    let Some(old) = engine.store().get_template(name.to_owned()).await? else {
        return Err(EngineError::NotFound {
            what: "template",
            id: name.to_owned(),
        });
    };
    refuse_file_owned(&old, "change")?;
    let mut def = def;
    // A definition read from the API carries `<redacted>` where secrets were: keep those.
    crate::redact::restore_value(&mut def.job, &old.job);
    let now = engine.clock().now();
    let mut template = def.into_template(name, None, now)?;
    template.created_at = old.created_at;
    // Every job must still render before anything is stored.
    let jobs = engine.store().jobs_of_template(name.to_owned()).await?;
    for job in &jobs {
        if let Some(usage) = &job.template {
            render_job(engine, &template, &job.name, usage).map_err(|e| {
                invalid(
                    &e.field,
                    format!(
                        "job `{}` made from this template would not render: {e}",
                        job.name
                    ),
                )
            })?;
        }
    }
    let template = engine.store().upsert_template(template).await?;
    let (rerendered, errors) = rerender_template_jobs(engine, &template, None).await;
    for e in &errors {
        tracing::error!("template error: {e}");
    }
    Ok(TemplateUpdate {
        template,
        rerendered,
    })
}

/// Deletes a template made through the API that no job is made from.
pub async fn delete_template(engine: &Engine, name: &str) -> Result<(), EngineError> {
    let Some(t) = engine.store().get_template(name.to_owned()).await? else {
        return Err(EngineError::NotFound {
            what: "template",
            id: name.to_owned(),
        });
    };
    refuse_file_owned(&t, "delete")?;
    Ok(engine.store().delete_template(name.to_owned()).await?)
}

fn refuse_file_owned(t: &JobTemplate, what: &str) -> Result<(), EngineError> {
    match &t.source {
        Some(file) => Err(EngineError::Conflict(format!(
            "template `{}` is defined by the file {file}: {what} it there",
            t.name
        ))),
        None => Ok(()),
    }
}

/// Makes the job `job_name` from the template `name` (a job of the API: re-rendered when the
/// template changes).
pub async fn instantiate(
    engine: &Engine,
    name: &str,
    job_name: &str,
    vars: BTreeMap<String, String>,
    overrides: BTreeMap<String, serde_json::Value>,
) -> Result<Job, EngineError> {
    let Some(template) = engine.store().get_template(name.to_owned()).await? else {
        return Err(EngineError::NotFound {
            what: "template",
            id: name.to_owned(),
        });
    };
    let usage = TemplateUse {
        name: template.name.clone(),
        vars,
        overrides,
    };
    let spec = render_job(engine, &template, job_name.trim(), &usage)?;
    engine.create_job_as(spec, None, Some(usage)).await
}

/// The names of the jobs made from each template.
pub async fn template_users(engine: &Engine) -> Result<HashMap<String, Vec<String>>, EngineError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let jobs = engine
        .store()
        .list_jobs(crate::store::JobFilter::default())
        .await?;
    for j in jobs {
        if let Some(t) = &j.template {
            out.entry(t.name.clone()).or_default().push(j.name.clone());
        }
    }
    Ok(out)
}
