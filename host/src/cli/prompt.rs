//! `cnp prompt …`: the stored prompts jobs refer to by `prompt_id`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;

use super::client::{seg, Client};
use super::output::{self, Format};
use crate::model::Prompt;

#[derive(Debug, Subcommand)]
pub enum PromptCommand {
    /// Store a prompt (`--content TEXT` or `--file prompt.md`).
    Create {
        /// Its id (a slug jobs refer to); default: the file's stem with `--file`, else
        /// generated.
        #[arg(long)]
        id: Option<String>,
        /// Its title; default: the file's first `# heading`, else its id.
        #[arg(long)]
        title: Option<String>,
        /// The prompt text.
        #[arg(long, group = "body", required_unless_present = "file")]
        content: Option<String>,
        /// Read the prompt text from a file.
        #[arg(long, short = 'f', group = "body")]
        file: Option<PathBuf>,
        /// A tag (repeatable).
        #[arg(long = "tag", short = 't')]
        tags: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List stored prompts.
    #[command(alias = "ls")]
    List {
        /// Only prompts with this tag.
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a prompt (its text with `--format table`).
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a prompt: only what is given changes.
    Update {
        id: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long, group = "body")]
        content: Option<String>,
        #[arg(long, short = 'f', group = "body")]
        file: Option<PathBuf>,
        /// Replace the tags (repeatable).
        #[arg(long = "tag", short = 't')]
        tags: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete a prompt.
    #[command(alias = "rm")]
    Delete {
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// The body of create/update.
#[derive(Debug, Serialize)]
struct PromptBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    title: String,
    content: String,
    tags: Vec<String>,
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// The first Markdown `# heading` of a text.
fn heading(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .and_then(|l| l.strip_prefix("# "))
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

pub async fn run(client: &Client, cmd: PromptCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PromptCommand::Create {
            id,
            title,
            content,
            file,
            tags,
            format,
        } => {
            let content = match (&content, &file) {
                (Some(c), _) => c.clone(),
                (None, Some(f)) => read(f)?,
                (None, None) => bail!("give --content or --file"),
            };
            let id = id.or_else(|| {
                file.as_ref()
                    .and_then(|f| f.file_stem())
                    .map(|s| s.to_string_lossy().into_owned())
            });
            let title = title
                .or_else(|| heading(&content))
                .or_else(|| id.clone())
                .unwrap_or_else(|| output::first_line(&content, 60));
            let p: Prompt = client
                .post(
                    "/api/prompts",
                    &PromptBody {
                        id,
                        title,
                        content,
                        tags,
                    },
                )
                .await?;
            if !output::print_structured(format, &p)? {
                println!("created prompt `{}` ({})", p.id, p.title);
            }
        }
        PromptCommand::List { tag, format } => {
            let mut q = Vec::new();
            if let Some(t) = tag {
                q.push(("tag", t));
            }
            let prompts: Vec<Prompt> = client.list("/api/prompts", &q, None).await?;
            if !output::print_structured(format, &prompts)? {
                if prompts.is_empty() {
                    println!("no prompts");
                } else {
                    output::print_table(&output::prompt_table(&prompts));
                }
            }
        }
        PromptCommand::Show { id, format } => {
            let p = client.prompt(&id).await?;
            if !output::print_structured(format, &p)? {
                output::print_table(&output::detail_table(vec![
                    ("ID", p.id.clone()),
                    ("Title", p.title.clone()),
                    ("Tags", p.tags.join(", ")),
                    ("Updated", output::local_time(Some(p.updated_at))),
                ]));
                println!();
                println!("{}", p.content.trim_end());
            }
        }
        PromptCommand::Update {
            id,
            title,
            content,
            file,
            tags,
            format,
        } => {
            let current = client.prompt(&id).await?;
            let content = match (content, &file) {
                (Some(c), _) => c,
                (None, Some(f)) => read(f)?,
                (None, None) => current.content,
            };
            let body = PromptBody {
                id: None,
                title: title.unwrap_or(current.title),
                content,
                tags: if tags.is_empty() { current.tags } else { tags },
            };
            let p: Prompt = client
                .put(&format!("/api/prompts/{}", seg(&current.id)), &body)
                .await?;
            if !output::print_structured(format, &p)? {
                println!("updated prompt `{}`", p.id);
            }
        }
        PromptCommand::Delete { id, yes } => {
            let p = client.prompt(&id).await?;
            if !yes && !super::confirm(&format!("Delete prompt `{}` ({})?", p.id, p.title))? {
                eprintln!("not deleted");
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
            client
                .delete(&format!("/api/prompts/{}", seg(&p.id)))
                .await?;
            println!("deleted prompt `{}`", p.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn titles_come_from_headings() {
        assert_eq!(
            super::heading("\n# Code quality\n\nCheck it").as_deref(),
            Some("Code quality")
        );
        assert_eq!(super::heading("Check it"), None);
    }
}
