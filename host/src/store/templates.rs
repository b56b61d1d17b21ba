//! Job templates.

use super::db::{params, Db, Row};
use super::jobs::JOB_COLUMNS;
use super::{atomic, from_json, from_ms, to_json, to_ms, Store, StoreError};
use crate::job_template::{JobTemplate, TemplateBody};
use crate::model::Job;

const TEMPLATE_COLUMNS: &str = "name, description, body, source, created_at, updated_at";

fn template_from_row(r: &Row<'_>) -> Result<JobTemplate, StoreError> {
    let body: TemplateBody = from_json(&r.get::<_, String>(2)?, "templates.body")?;
    Ok(JobTemplate {
        name: r.get(0)?,
        description: r.get(1)?,
        vars: body.vars,
        job: body.job,
        source: r.get(3)?,
        created_at: from_ms(r.get(4)?),
        updated_at: from_ms(r.get(5)?),
    })
}

fn get_template_conn(c: &Db, name: &str) -> Result<Option<JobTemplate>, StoreError> {
    c.query_opt(
        &format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE name = ?1"),
        [name],
        template_from_row,
    )
}

impl Store {
    /// Creates or replaces a template (its `created_at` stays when it existed).
    pub async fn upsert_template(&self, t: JobTemplate) -> Result<JobTemplate, StoreError> {
        self.write(move |c| {
            let body = TemplateBody {
                vars: t.vars.clone(),
                job: t.job.clone(),
            };
            c.execute(
                "INSERT INTO templates (name, description, body, source, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET description = excluded.description,
                    body = excluded.body, source = excluded.source,
                    updated_at = excluded.updated_at",
                params![
                    t.name,
                    t.description,
                    to_json(&body),
                    t.source,
                    to_ms(t.created_at),
                    to_ms(t.updated_at)
                ],
            )?;
            get_template_conn(c, &t.name)?.ok_or(StoreError::NotFound {
                what: "template",
                id: t.name,
            })
        })
        .await
    }

    pub async fn get_template(&self, name: String) -> Result<Option<JobTemplate>, StoreError> {
        self.read(move |c| get_template_conn(c, &name)).await
    }

    /// Every template, by name.
    pub async fn list_templates(&self) -> Result<Vec<JobTemplate>, StoreError> {
        self.read(|c| {
            c.query_map(
                &format!("SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name"),
                (),
                template_from_row,
            )
        })
        .await
    }

    /// The jobs made from a template, by name.
    pub async fn jobs_of_template(&self, name: String) -> Result<Vec<Job>, StoreError> {
        self.read(move |c| {
            c.query_map(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE template = ?1 ORDER BY name"),
                [&name],
                super::jobs::job_from_row,
            )
        })
        .await
    }

    /// Deletes a template no job is made from.
    pub async fn delete_template(&self, name: String) -> Result<(), StoreError> {
        self.write(move |c| {
            atomic(c, |c| {
                let used: i64 = c.query_one(
                    "SELECT COUNT(*) FROM jobs WHERE template = ?1",
                    [&name],
                    |r| r.get(0),
                )?;
                if used > 0 {
                    return Err(StoreError::Conflict(format!(
                        "template `{name}` is used by {used} job(s): delete them first"
                    )));
                }
                if c.execute("DELETE FROM templates WHERE name = ?1", [&name])? == 0 {
                    return Err(StoreError::NotFound {
                        what: "template",
                        id: name,
                    });
                }
                Ok(())
            })
        })
        .await
    }
}
