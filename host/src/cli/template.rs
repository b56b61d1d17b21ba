//! `cnp template …`: job templates on the running service, and jobs made from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::client::{seg, Client};
use super::output::{self, Format};
use crate::job_template::{TemplateDef, VarDef};
use crate::model::Job;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List the templates, with their variables and how many jobs are made from each.
    #[command(alias = "ls")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a template: its variables, its job (as YAML) and the jobs made from it.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Make a job from a template.
    Instantiate {
        /// The template.
        template: String,
        /// The new job's name.
        #[arg(long)]
        name: String,
        /// A variable, `NAME=VALUE` (repeatable).
        #[arg(long = "var", short = 'v', value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// A job field that replaces the template's, `FIELD=YAML` (repeatable), e.g.
        /// `--set priority=9` or `--set 'schedule={type: interval, every: 1h}'`.
        #[arg(long = "set", value_name = "FIELD=YAML")]
        overrides: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Store a template from a YAML file (the `templates/` file shape; the name defaults to the
    /// file's stem).
    Create {
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Replace a template made through the API with a YAML file; its jobs are re-rendered.
    Update {
        name: String,
        #[arg(long, short = 'f')]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete a template no job is made from.
    #[command(alias = "rm")]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// A template as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, VarDef>,
    pub job: serde_json::Value,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub jobs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerendered: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct InstantiateBody {
    name: String,
    vars: BTreeMap<String, String>,
    overrides: BTreeMap<String, serde_json::Value>,
}

/// `NAME=VALUE` pairs.
fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => bail!("{what} `{s}`: expected NAME=VALUE"),
        })
        .collect()
}

/// `FIELD=YAML` overrides as JSON values.
fn overrides(items: &[String]) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    pairs(items, "--set")?
        .into_iter()
        .map(|(k, v)| {
            let value: serde_json::Value = serde_yaml_ng::from_str(&v)
                .with_context(|| format!("--set {k}: `{v}` is not a YAML value"))?;
            Ok((k, value))
        })
        .collect()
}

/// `repo*, branch=main` (`*`: required).
fn vars_text(vars: &BTreeMap<String, VarDef>) -> String {
    vars.iter()
        .map(|(k, v)| match (&v.default, v.is_required()) {
            (Some(d), _) => format!("{k}={}", d.0),
            (None, true) => format!("{k}*"),
            (None, false) => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_def(file: &std::path::Path) -> anyhow::Result<TemplateDef> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (name, mut def) = crate::job_template::parse_template_file(&text, file)?;
    def.name = Some(name);
    Ok(def)
}

fn print_template(t: &TemplateInfo) -> anyhow::Result<()> {
    output::print_table(&output::detail_table(vec![
        ("Name", t.name.clone()),
        ("Description", t.description.clone().unwrap_or_default()),
        (
            "Source",
            t.source.clone().unwrap_or_else(|| "API".to_owned()),
        ),
        ("Jobs", t.jobs.join(", ")),
        ("Updated", output::local_time(Some(t.updated_at))),
    ]));
    if !t.vars.is_empty() {
        println!();
        let mut table = output::table(["VARIABLE", "REQUIRED", "DEFAULT", "DESCRIPTION"]);
        for (k, v) in &t.vars {
            table.add_row(vec![
                k.clone(),
                if v.is_required() { "yes" } else { "no" }.to_owned(),
                v.default.as_ref().map(|d| d.0.clone()).unwrap_or_default(),
                v.description.clone().unwrap_or_default(),
            ]);
        }
        output::print_table(&table);
    }
    println!();
    println!("job:");
    let yaml = serde_yaml_ng::to_string(&t.job)?;
    for line in yaml.lines() {
        println!("  {line}");
    }
    Ok(())
}

pub async fn run(client: &Client, cmd: TemplateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TemplateCommand::List { format } => {
            let templates: Vec<TemplateInfo> = client.list("/api/templates", &[], None).await?;
            if !output::print_structured(format, &templates)? {
                if templates.is_empty() {
                    println!("no templates");
                } else {
                    let mut t = output::table(["NAME", "VARIABLES", "JOBS", "SOURCE", "UPDATED"]);
                    for x in &templates {
                        t.add_row(vec![
                            x.name.clone(),
                            vars_text(&x.vars),
                            x.jobs.len().to_string(),
                            x.source.clone().unwrap_or_else(|| "API".to_owned()),
                            output::local_time(Some(x.updated_at)),
                        ]);
                    }
                    output::print_table(&t);
                }
            }
        }
        TemplateCommand::Show { name, format } => {
            let t: TemplateInfo = client
                .get(&format!("/api/templates/{}", seg(&name)), &[])
                .await?;
            if !output::print_structured(format, &t)? {
                print_template(&t)?;
            }
        }
        TemplateCommand::Instantiate {
            template,
            name,
            vars,
            overrides: sets,
            format,
        } => {
            let body = InstantiateBody {
                name,
                vars: pairs(&vars, "--var")?.into_iter().collect(),
                overrides: overrides(&sets)?,
            };
            let job: Job = client
                .post(
                    &format!("/api/templates/{}/instantiate", seg(&template)),
                    &body,
                )
                .await?;
            if !output::print_structured(format, &job)? {
                println!(
                    "created job `{}` ({}) from template `{template}`",
                    job.name, job.id
                );
            }
        }
        TemplateCommand::Create { file, format } => {
            let def = read_def(&file)?;
            let t: TemplateInfo = client.post("/api/templates", &def).await?;
            if !output::print_structured(format, &t)? {
                println!("created template `{}`", t.name);
            }
        }
        TemplateCommand::Update { name, file, format } => {
            let mut def = read_def(&file)?;
            def.name = Some(name.clone());
            let t: TemplateInfo = client
                .put(&format!("/api/templates/{}", seg(&name)), &def)
                .await?;
            if !output::print_structured(format, &t)? {
                let n = t.rerendered.as_ref().map(Vec::len).unwrap_or(0);
                println!("updated template `{}` ({n} job(s) re-rendered)", t.name);
            }
        }
        TemplateCommand::Delete { name, yes } => {
            if !yes && !super::confirm(&format!("Delete template `{name}`?"))? {
                eprintln!("not deleted");
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
            client
                .delete(&format!("/api/templates/{}", seg(&name)))
                .await?;
            println!("deleted template `{name}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_and_overrides_parse() {
        let p = pairs(&["repo=/src/x=y".into()], "--var").unwrap();
        assert_eq!(p, vec![("repo".to_owned(), "/src/x=y".to_owned())]);
        assert!(pairs(&["repo".into()], "--var").is_err());
        let o = overrides(&[
            "priority=9".into(),
            "schedule={type: interval, every: 1h}".into(),
        ])
        .unwrap();
        assert_eq!(o["priority"], serde_json::json!(9));
        assert_eq!(o["schedule"]["every"], "1h");
    }

    #[test]
    fn variables_summary() {
        let vars: BTreeMap<String, VarDef> = serde_yaml_ng::from_str(
            "repo: {}\nbranch: { default: main }\nnote: { required: false }\n",
        )
        .unwrap();
        assert_eq!(vars_text(&vars), "branch=main, note, repo*");
    }
}
