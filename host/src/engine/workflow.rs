//! Workflows in the engine: the job graph kept in memory, the checks a `depends_on` must pass,
//! and what a run's end starts downstream.
//!
//! When a run ends for good (no retry follows), [`plan`] decides each outgoing edge (its `on`
//! and `when`) and the store records those verdicts and the downstream runs they start in the
//! same transaction as the end ([`crate::store::Settle`]); [`start`] then dispatches the runs
//! recorded `queued` and settles, in turn, the downstream of those recorded as ended (skipped,
//! or failed on a `when` error). Ends recorded elsewhere (skips, cancels before a start, runs a
//! crash interrupted) go through [`settle_ended`]; at start-up [`reconcile`] settles what a
//! crash cut short between those steps.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError, QueuedRun};
use crate::manifest::SpecError;
use crate::model::{DependsOn, ExecutionStatus, Job, JobExecution};
use crate::store::{EdgeVerdict, Settle, Settled};
use crate::workflow::{self, Graph, UpstreamRun};

/// Loads the graph of every job with a `depends_on` (at start-up).
pub(super) async fn load(engine: &Engine) -> Result<usize, EngineError> {
    let deps = engine.shared.store.job_dependencies().await?;
    let mut g = Graph::default();
    for d in &deps {
        g.set(
            &d.id,
            Some(workflow::node_of(&d.name, &d.depends_on, &d.resolved)),
        );
    }
    let n = g.len();
    *engine.shared.graph.lock().unwrap() = g;
    Ok(n)
}

/// Checks a job's `depends_on` against the other jobs: every upstream exists, no cycle. Returns
/// each edge's upstream job id.
pub(super) async fn check(
    engine: &Engine,
    job_id: Option<&str>,
    name: &str,
    deps: &DependsOn,
) -> Result<Vec<Option<String>>, EngineError> {
    let mut ids = Vec::with_capacity(deps.edges.len());
    for (i, e) in deps.edges.iter().enumerate() {
        let found = engine
            .shared
            .store
            .job_id_and_name(e.job.trim().to_owned())
            .await?;
        let Some((id, _)) = found else {
            return Err(invalid(
                &format!("depends_on[{i}].job"),
                format!("no job `{}`", e.job.trim()),
            ));
        };
        if Some(id.as_str()) == job_id {
            return Err(invalid(
                &format!("depends_on[{i}].job"),
                format!("a job cannot depend on itself (`{name}` → `{name}`)"),
            ));
        }
        ids.push(Some(id));
    }
    if let Some(job_id) = job_id {
        let ups: Vec<String> = ids.iter().flatten().cloned().collect();
        let cycle = engine.shared.graph.lock().unwrap().cycle_with(job_id, &ups);
        if let Some(cycle) = cycle {
            let mut names = Vec::with_capacity(cycle.len());
            for id in &cycle {
                names.push(if id == job_id {
                    name.to_owned()
                } else {
                    engine
                        .shared
                        .store
                        .job_id_and_name(id.clone())
                        .await?
                        .map_or_else(|| id.clone(), |(_, n)| n)
                });
            }
            // In the direction results flow (upstream → downstream); the last arrow is the
            // edge being added: this job depending on the one before it.
            let closing = cycle.len().checked_sub(2).and_then(|i| cycle.get(i));
            let edge = ids
                .iter()
                .position(|id| id.as_ref() == closing)
                .unwrap_or(0);
            return Err(invalid(
                &format!("depends_on[{edge}].job"),
                format!("would make a cycle: {}", names.join(" → ")),
            ));
        }
    }
    Ok(ids)
}

fn invalid(field: &str, message: String) -> EngineError {
    EngineError::Invalid(SpecError {
        field: field.to_owned(),
        message,
    })
}

/// Puts a job's edges in the graph (after its definition is stored).
pub(super) fn install(engine: &Engine, job: &Job, resolved: &[Option<String>]) {
    let node = workflow::node_of(&job.name, &job.depends_on, resolved);
    engine.shared.graph.lock().unwrap().set(&job.id, Some(node));
}

/// Refuses to delete a job other jobs depend on, or to rename one they name.
pub(super) fn check_referenced(
    engine: &Engine,
    job: &Job,
    new_name: Option<&str>,
) -> Result<(), EngineError> {
    let g = engine.shared.graph.lock().unwrap();
    let dependents: Vec<&str> = g
        .downstream(&job.id)
        .iter()
        .filter_map(|d| g.node(d))
        .filter(|n| match new_name {
            None => true,
            // A rename breaks only the edges that name the job (not those by id).
            Some(_) => n
                .edges
                .iter()
                .any(|(up, e)| up == &job.id && e.job.trim() == job.name),
        })
        .map(|n| n.name.as_str())
        .collect();
    if dependents.is_empty() || new_name == Some(job.name.as_str()) {
        return Ok(());
    }
    let list = dependents
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(EngineError::Conflict(match new_name {
        None => format!(
            "job `{}` is an upstream of {list} (depends_on): change or delete those first",
            job.name
        ),
        Some(_) => format!(
            "job `{}` is named in depends_on of {list}: refer to it by id there, or change those first",
            job.name
        ),
    }))
}

pub(super) fn remove(engine: &Engine, job_id: &str) {
    engine.shared.graph.lock().unwrap().set(job_id, None);
}

/// What an ended run is to the edges leaving its job.
pub(super) struct Ended<'a> {
    pub job_id: &'a str,
    pub execution_id: &'a str,
    pub first_attempt_id: &'a str,
    pub workflow_run_id: Option<&'a str>,
    pub facts: UpstreamRun,
}

impl<'a> Ended<'a> {
    pub fn of(e: &'a JobExecution, job_name: String) -> Ended<'a> {
        Ended {
            job_id: &e.job_id,
            execution_id: &e.id,
            first_attempt_id: e.first_attempt_id.as_deref().unwrap_or(&e.id),
            workflow_run_id: e.workflow_run_id.as_deref(),
            facts: facts_of(e, job_name),
        }
    }
}

pub(super) fn facts_of(e: &JobExecution, job_name: String) -> UpstreamRun {
    UpstreamRun {
        job_name,
        execution_id: e.id.clone(),
        status: Some(e.status),
        exit_code: e.exit_code,
        result: e.output.clone(),
        error: e.error.clone(),
        cost_usd: e.cost_usd,
        duration_ms: e.execution_time_ms,
        session_id: e.session_id.clone(),
    }
}

/// The verdicts of a run's end on the edges leaving its job (`None`: no job depends on it).
pub(super) async fn plan(engine: &Engine, ended: Ended<'_>, now: DateTime<Utc>) -> Option<Settle> {
    if !engine
        .shared
        .graph
        .lock()
        .unwrap()
        .has_downstream(ended.job_id)
    {
        return None;
    }
    let pass_id = ended
        .workflow_run_id
        .unwrap_or(ended.first_attempt_id)
        .to_owned();
    let root = match ended.workflow_run_id {
        None => ended.job_id.to_owned(),
        Some(p) => match engine.shared.store.workflow_root(p.to_owned()).await {
            Ok(Some(r)) => r,
            Ok(None) => ended.job_id.to_owned(),
            Err(e) => {
                tracing::error!(pass = p, error = %e, "cannot read the workflow pass");
                ended.job_id.to_owned()
            }
        },
    };
    let g = engine.shared.graph.lock().unwrap();
    let reach = g.reach(&root);
    let mut verdicts = Vec::new();
    for d in g.downstream(ended.job_id) {
        let Some(node) = g.node(d) else { continue };
        let Some((_, edge)) = node.edges.iter().find(|(up, _)| up == ended.job_id) else {
            continue;
        };
        let (satisfied, reason, error) =
            match workflow::edge_verdict(edge.on, edge.when.as_deref(), &ended.facts) {
                Ok((s, r)) => (s, r, false),
                Err(e) => (
                    false,
                    Some(format!("depends_on `{}`: when {e}", edge.job)),
                    true,
                ),
            };
        let expected: Vec<String> = node
            .edges
            .iter()
            .map(|(up, _)| up.clone())
            .filter(|up| reach.contains(up))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        verdicts.push(EdgeVerdict {
            downstream_job: d.clone(),
            satisfied,
            reason,
            error,
            expected,
            any: node.any,
        });
    }
    Some(Settle {
        pass_id,
        upstream_execution: ended.execution_id.to_owned(),
        upstream_job: ended.job_id.to_owned(),
        verdicts,
        now,
    })
}

/// Dispatches the downstream runs a settle recorded `queued`, and settles the downstream of
/// those it recorded ended — until nothing more is decided.
pub(super) async fn start(engine: &Engine, settled: Vec<Settled>) {
    let mut work = settled;
    while let Some(s) = work.pop() {
        if s.status == ExecutionStatus::Queued {
            let priority = {
                let st = engine.shared.state.lock().unwrap();
                st.jobs.get(s.job_id.as_str()).map(|j| j.priority)
            };
            let Some(priority) = priority else { continue };
            tracing::info!(execution = %s.execution_id, job = %s.job_id, "run started by its upstreams");
            engine.publish_exec(&s.execution_id, &s.job_id, ExecutionStatus::Queued, None);
            engine.enqueue(QueuedRun {
                execution_id: s.execution_id,
                job_id: s.job_id,
                priority,
                seq: 0,
                scheduled_for: None,
                retry_count: 0,
                epoch: None,
                slot: None,
                trace: Default::default(),
            });
            continue;
        }
        engine.publish_exec(&s.execution_id, &s.job_id, s.status, s.reason.clone());
        match settle_one(engine, &s.execution_id).await {
            Ok(more) => work.extend(more),
            Err(e) => {
                tracing::error!(execution = %s.execution_id, error = %e, "cannot settle a workflow run's downstream (retried at the next start)")
            }
        }
    }
}

/// Settles the downstream of a run that ended outside the normal end of a run (skipped,
/// cancelled before it started, interrupted at a restart), then starts what that decides.
pub(super) async fn settle_ended(engine: &Engine, job_id: &str, execution_id: &str) {
    // Most jobs have nothing downstream: decided from memory, no read.
    if !engine.shared.graph.lock().unwrap().has_downstream(job_id) {
        return;
    }
    match settle_one(engine, execution_id).await {
        Ok(settled) => start(engine, settled).await,
        Err(e) => {
            tracing::error!(execution = %execution_id, error = %e, "cannot settle a workflow run's downstream (retried at the next start)")
        }
    }
}

async fn settle_one(engine: &Engine, execution_id: &str) -> Result<Vec<Settled>, EngineError> {
    let store = &engine.shared.store;
    let Some(e) = store.get_execution(execution_id.to_owned()).await? else {
        return Ok(Vec::new());
    };
    if !e.status.is_terminal() {
        return Ok(Vec::new());
    }
    let name = engine.job_name(&e.job_id).await;
    let now = engine.shared.clock.now();
    match plan(engine, Ended::of(&e, name), now).await {
        Some(settle) => Ok(store.settle(settle).await?),
        None => Ok(Vec::new()),
    }
}

/// At start-up: settles pass runs whose end was recorded but whose downstream verdicts were
/// not (a crash between an end recorded outside a run's own end and its settle).
pub(super) async fn reconcile(engine: &Engine, since: DateTime<Utc>) -> Result<usize, EngineError> {
    // No job has upstreams: nothing to settle, and no query at start-up.
    if engine.shared.graph.lock().unwrap().is_empty() {
        return Ok(0);
    }
    let ended = engine.shared.store.ended_pass_runs(since).await?;
    let mut n = 0;
    for (e, done) in ended {
        let missing = {
            let g = engine.shared.graph.lock().unwrap();
            g.downstream(&e.job_id).iter().any(|d| !done.contains(d))
        };
        if missing {
            n += 1;
            settle_ended(engine, &e.job_id, &e.id).await;
        }
    }
    Ok(n)
}

/// A run started by its upstreams: its prompt rendered with the pass's results, and the
/// session to resume when the job asks for its upstream's. `runs` are the pass's ended runs
/// ([`crate::store::Store::pass_runs`]), read once by the caller (the condition hooks saw them).
pub(super) fn prepare(
    engine: &Engine,
    job: &Job,
    prompt: &str,
    pass_id: &str,
    runs: &[(String, JobExecution)],
    upstream_ids: &[String],
) -> Result<(String, Option<String>), String> {
    let facts: Vec<UpstreamRun> = runs.iter().map(|(n, e)| facts_of(e, n.clone())).collect();
    let rendered = workflow::render_prompt(prompt, pass_id, &facts, upstream_ids)?;
    let session = if job.execution_options.resume_upstream_session {
        // The first upstream in `depends_on` order that reported a session.
        let g = engine.shared.graph.lock().unwrap();
        let order: Vec<String> = g
            .node(&job.id)
            .map(|n| n.edges.iter().map(|(up, _)| up.clone()).collect())
            .unwrap_or_default();
        drop(g);
        order.iter().find_map(|up| {
            runs.iter()
                .find(|(_, e)| &e.job_id == up && upstream_ids.contains(&e.id))
                .or_else(|| runs.iter().find(|(_, e)| &e.job_id == up))
                .and_then(|(_, e)| e.session_id.clone())
        })
    } else {
        None
    };
    Ok((rendered, session))
}

impl Engine {
    /// A pass as a graph: the jobs its first job reaches (as the graph is now), each with its
    /// run in this pass, and every edge with its verdict.
    pub async fn workflow_pass(&self, id: &str) -> Result<crate::model::WorkflowPass, EngineError> {
        use crate::model::{PassEdgeView, PassNode, WorkflowPass};
        let rec = self
            .shared
            .store
            .workflow_run(id.to_owned())
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "workflow pass",
                id: id.to_owned(),
            })?;
        let root = rec.run.root_job_id.clone().unwrap_or_default();
        // Jobs in the pass: those the root reaches now, and any that ran in it.
        let (mut order, edges) = {
            let g = self.shared.graph.lock().unwrap();
            let reach = g.reach(&root);
            let mut order: Vec<String> = vec![root.clone()];
            let mut edges = Vec::new();
            let mut stack = vec![root.clone()];
            let mut seen = HashSet::from([root.clone()]);
            while let Some(j) = stack.pop() {
                for d in g.downstream(&j) {
                    if seen.insert(d.clone()) {
                        order.push(d.clone());
                        stack.push(d.clone());
                    }
                }
            }
            for d in &order {
                if let Some(n) = g.node(d) {
                    for (up, e) in &n.edges {
                        if reach.contains(up) {
                            edges.push((up.clone(), d.clone(), e.on, e.when.clone()));
                        }
                    }
                }
            }
            (order, edges)
        };
        for e in &rec.executions {
            if !order.contains(&e.job_id) {
                order.push(e.job_id.clone());
            }
        }
        let mut nodes = Vec::with_capacity(order.len());
        for job_id in &order {
            let attempts: Vec<&JobExecution> = rec
                .executions
                .iter()
                .filter(|e| &e.job_id == job_id)
                .collect();
            let latest = attempts.iter().max_by_key(|e| e.retry_count).copied();
            nodes.push(PassNode {
                job_id: job_id.clone(),
                name: self.job_name(job_id).await,
                status: latest.map(|e| e.status),
                execution_id: latest.map(|e| e.id.clone()),
                attempts: attempts.len() as u32,
                reason: latest
                    .filter(|e| !matches!(e.status, ExecutionStatus::Completed))
                    .and_then(|e| e.error.clone()),
                upstream_ids: latest.map(|e| e.upstream_ids.clone()).unwrap_or_default(),
            });
        }
        let edges = edges
            .into_iter()
            .map(|(from, to, on, when)| {
                let verdict = rec
                    .edges
                    .iter()
                    .find(|v| v.upstream_job == from && v.downstream_job == to);
                PassEdgeView {
                    satisfied: verdict.map(|v| v.satisfied),
                    reason: verdict.and_then(|v| v.reason.clone()),
                    from,
                    to,
                    on,
                    when,
                }
            })
            .collect();
        let open = nodes
            .iter()
            .any(|n| n.status.is_none_or(|s| !s.is_terminal()));
        let status = if rec.run.cancelled_at.is_some() {
            "cancelled"
        } else if open {
            "running"
        } else {
            "finished"
        };
        Ok(WorkflowPass {
            id: rec.run.id,
            root_job_id: rec.run.root_job_id,
            root_job_name: rec.run.root_job_name,
            root_execution_id: rec.run.root_execution_id,
            created_at: rec.run.created_at,
            cancelled_at: rec.run.cancelled_at,
            status: status.into(),
            nodes,
            edges,
        })
    }

    /// Cancels a pass: nothing more of it starts, and its queued and running runs are
    /// cancelled. Returns how many runs were stopped.
    pub async fn cancel_workflow(&self, id: &str) -> Result<usize, EngineError> {
        let now = self.shared.clock.now();
        if !self
            .shared
            .store
            .cancel_workflow_run(id.to_owned(), now)
            .await?
        {
            return Err(EngineError::NotFound {
                what: "workflow pass",
                id: id.to_owned(),
            });
        }
        let rec = self.shared.store.workflow_run(id.to_owned()).await?;
        let mut n = 0;
        for e in rec.map(|r| r.executions).unwrap_or_default() {
            if !e.status.is_terminal() && self.cancel_execution(&e.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}
