//! Workflows without the engine: the job graph (`depends_on` edges, cycle checks, which jobs a
//! pass reaches), the `when:` expressions on edges and the prompts that use upstream results —
//! evaluated with minijinja under a time (fuel) and size limit. The engine
//! (`engine/workflow.rs`) applies them when a run ends; the store records what they decide.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::model::{DependOn, DependsOn, ExecutionStatus};

/// Longest `when:` expression accepted.
pub const MAX_WHEN_LEN: usize = 4096;
/// Upstream result text given to expressions and prompts, at most (the rest is cut with a
/// marker saying how much).
pub const MAX_RESULT_IN_CONTEXT: usize = 64 * 1024;
/// A rendered prompt, at most.
pub const MAX_RENDERED_PROMPT: usize = 512 * 1024;
/// minijinja fuel for one evaluation (one unit ≈ one instruction): enough for loops over a
/// few thousand items, not for a runaway one.
const FUEL: u64 = 200_000;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A misspelt field is an error, not an empty string that silently decides a branch.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_keep_trailing_newline(true);
        env
    })
}

/// Checks a `when:` expression's syntax (at create/update/load).
pub fn check_when(expr: &str) -> Result<(), String> {
    if expr.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if expr.len() > MAX_WHEN_LEN {
        return Err(format!("longer than {MAX_WHEN_LEN} bytes"));
    }
    env()
        .compile_expression(expr)
        .map(|_| ())
        .map_err(|e| format!("`{expr}` is not a valid expression: {}", describe(&e)))
}

/// Evaluates a `when:` expression over an upstream run: `Ok(true)` satisfies the edge.
pub fn eval_when(expr: &str, upstream: &UpstreamRun) -> Result<bool, String> {
    let compiled = env()
        .compile_expression(expr)
        .map_err(|e| format!("`{expr}`: {}", describe(&e)))?;
    let facts = upstream.to_value();
    // The upstream's fields both at the top level and under `upstream.`.
    let ctx = Value::from_iter(
        facts
            .try_iter()
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k.as_str()?.to_owned(), facts.get_item(&k).ok()?)))
            .chain([("upstream".to_owned(), facts.clone())]),
    );
    compiled
        .eval(ctx)
        .map(|v| v.is_true())
        .map_err(|e| format!("`{expr}`: {}", describe(&e)))
}

/// Renders a downstream run's prompt: `{{ upstream.<job>.result }}` and the other fields, for
/// every run of the pass that ended before it (by job name, and by the name with every
/// character other than a letter, digit or `_` replaced by `_`); `{{ upstreams }}`: the
/// direct upstream runs, in `depends_on` order; `{{ workflow.id }}`.
pub fn render_prompt(
    template: &str,
    pass_id: &str,
    runs: &[UpstreamRun],
    direct: &[String],
) -> Result<String, String> {
    let mut by_name: Vec<(String, Value)> = Vec::new();
    for r in runs {
        let v = r.to_value();
        let ident = identifier(&r.job_name);
        if ident != r.job_name {
            by_name.push((ident, v.clone()));
        }
        by_name.push((r.job_name.clone(), v));
    }
    let upstreams: Vec<Value> = direct
        .iter()
        .filter_map(|id| runs.iter().find(|r| &r.execution_id == id))
        .map(UpstreamRun::to_value)
        .collect();
    let ctx = minijinja::context! {
        upstream => Value::from_iter(by_name),
        upstreams => upstreams,
        workflow => minijinja::context! { id => pass_id },
    };
    render_limited(template, ctx)
}

/// A prompt template rendered with `ctx`, at most [`MAX_RENDERED_PROMPT`] bytes.
fn render_limited(template: &str, ctx: Value) -> Result<String, String> {
    let out = env()
        .render_str(template, ctx)
        .map_err(|e| format!("the prompt template: {}", describe(&e)))?;
    if out.len() > MAX_RENDERED_PROMPT {
        return Err(format!(
            "the rendered prompt is {} bytes, more than the {MAX_RENDERED_PROMPT} allowed",
            out.len()
        ));
    }
    Ok(out)
}

/// Longest string of a webhook payload a prompt sees (longer ones are cut, marked `…`).
pub const MAX_PAYLOAD_STRING: usize = 16 * 1024;

/// Renders a webhook run's prompt: `{{ payload.head_commit.message }}` and the like, over the
/// request's JSON (each string cut to [`MAX_PAYLOAD_STRING`] bytes; the result at most the
/// prompt limit). An undefined field is an error naming it, as for upstream results.
pub fn render_payload_prompt(
    template: &str,
    payload: &serde_json::Value,
) -> Result<String, String> {
    fn cap(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            J::String(s) => J::String(crate::text::truncate_bytes(s, MAX_PAYLOAD_STRING)),
            J::Array(a) => J::Array(a.iter().map(cap).collect()),
            J::Object(o) => J::Object(o.iter().map(|(k, v)| (k.clone(), cap(v))).collect()),
            other => other.clone(),
        }
    }
    let ctx = minijinja::context! { payload => Value::from_serialize(cap(payload)) };
    render_limited(template, ctx)
}

/// A job name as a template identifier.
pub fn identifier(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// What expressions and prompts see of an ended run.
#[derive(Debug, Clone, Default)]
pub struct UpstreamRun {
    pub job_name: String,
    pub execution_id: String,
    pub status: Option<ExecutionStatus>,
    pub exit_code: Option<i32>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<u64>,
    pub session_id: Option<String>,
}

impl UpstreamRun {
    pub fn to_value(&self) -> Value {
        let result = self.result.as_deref().map(cap);
        let json = self.result.as_deref().and_then(parse_json);
        minijinja::context! {
            job => self.job_name,
            execution_id => self.execution_id,
            status => self.status.map(ExecutionStatus::as_str),
            exit_code => self.exit_code,
            result => result,
            error => self.error,
            cost_usd => self.cost_usd,
            duration_ms => self.duration_ms,
            session_id => self.session_id,
            json => json.map(Value::from_serialize),
        }
    }
}

/// `s` cut at [`MAX_RESULT_IN_CONTEXT`] bytes (on a character boundary), with a line saying how
/// much was cut.
pub fn cap(s: &str) -> String {
    if s.len() <= MAX_RESULT_IN_CONTEXT {
        return s.to_owned();
    }
    let mut end = MAX_RESULT_IN_CONTEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n… [truncated by cnp: {} more bytes]",
        &s[..end],
        s.len() - end
    )
}

/// The result as JSON: the whole text, or else the last fenced ```json block in it (models
/// often wrap their JSON so).
pub fn parse_json(text: &str) -> Option<serde_json::Value> {
    let t = text.trim();
    if t.is_empty() || t.len() > 8 * 1024 * 1024 {
        return None;
    }
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let start = t.rfind("```json")? + "```json".len();
    let rest = &t[start..];
    let end = rest.find("```")?;
    serde_json::from_str(rest[..end].trim()).ok()
}

/// Whether an edge is satisfied by an upstream run, and why not: `Err` when its `when` could
/// not be evaluated.
pub fn edge_verdict(
    on: DependOn,
    when: Option<&str>,
    upstream: &UpstreamRun,
) -> Result<(bool, Option<String>), String> {
    let status = upstream.status.unwrap_or(ExecutionStatus::Failed);
    if !on.accepts(status) {
        return Ok((
            false,
            Some(format!(
                "`{}` ended {} (the edge needs {})",
                upstream.job_name,
                status.as_str(),
                on.as_str()
            )),
        ));
    }
    match when {
        None => Ok((true, None)),
        Some(w) => match eval_when(w, upstream)? {
            true => Ok((true, None)),
            false => Ok((
                false,
                Some(format!("when `{w}` is false for `{}`", upstream.job_name)),
            )),
        },
    }
}

/// One job's upstream edges, resolved to job ids.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub any: bool,
    /// `(upstream job id, the edge)`; edges to jobs that no longer exist are left out.
    pub edges: Vec<(String, crate::model::Dependency)>,
}

/// The jobs that have upstreams, and who is downstream of whom.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    down: HashMap<String, Vec<String>>,
}

impl Graph {
    /// Sets (or, with no edges, removes) a job's upstream edges.
    pub fn set(&mut self, job_id: &str, node: Option<Node>) {
        if let Some(old) = self.nodes.remove(job_id) {
            for (up, _) in &old.edges {
                if let Some(d) = self.down.get_mut(up) {
                    d.retain(|x| x != job_id);
                    if d.is_empty() {
                        self.down.remove(up);
                    }
                }
            }
        }
        if let Some(node) = node.filter(|n| !n.edges.is_empty()) {
            for (up, _) in &node.edges {
                let d = self.down.entry(up.clone()).or_default();
                if !d.iter().any(|x| x == job_id) {
                    d.push(job_id.to_owned());
                }
            }
            self.nodes.insert(job_id.to_owned(), node);
        }
    }

    pub fn node(&self, job_id: &str) -> Option<&Node> {
        self.nodes.get(job_id)
    }

    /// The jobs with an edge from `job_id`.
    pub fn downstream(&self, job_id: &str) -> &[String] {
        self.down.get(job_id).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn has_downstream(&self, job_id: &str) -> bool {
        self.down.contains_key(job_id)
    }

    /// `root` and every job downstream of it.
    pub fn reach(&self, root: &str) -> HashSet<String> {
        let mut seen = HashSet::from([root.to_owned()]);
        let mut stack = vec![root.to_owned()];
        while let Some(j) = stack.pop() {
            for d in self.downstream(&j) {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    }

    /// The cycle that giving `job_id` the upstreams `ups` would close, as job ids from
    /// `job_id` back to it (`None`: no cycle).
    pub fn cycle_with(&self, job_id: &str, ups: &[String]) -> Option<Vec<String>> {
        // A path from `job_id` down to one of `ups` closes a cycle through the new edge.
        let targets: HashSet<&str> = ups.iter().map(String::as_str).collect();
        if targets.contains(job_id) {
            return Some(vec![job_id.to_owned(), job_id.to_owned()]);
        }
        let mut parent: HashMap<String, String> = HashMap::new();
        let mut stack = vec![job_id.to_owned()];
        let mut seen = HashSet::from([job_id.to_owned()]);
        while let Some(j) = stack.pop() {
            for d in self.downstream(&j) {
                if d == job_id || !seen.insert(d.clone()) {
                    continue;
                }
                parent.insert(d.clone(), j.clone());
                if targets.contains(d.as_str()) {
                    // job_id → … → d, then d → job_id (the new edge).
                    let mut path = vec![d.clone()];
                    let mut at = d.clone();
                    while let Some(p) = parent.get(&at) {
                        path.push(p.clone());
                        at = p.clone();
                    }
                    path.reverse();
                    path.push(job_id.to_owned());
                    return Some(path);
                }
                stack.push(d.clone());
            }
        }
        None
    }

    /// Every job id that has or is an upstream.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }
}

/// A `depends_on`'s edges with their upstream ids (`None`: unresolved).
pub fn node_of(name: &str, deps: &DependsOn, resolved: &[Option<String>]) -> Node {
    Node {
        name: name.to_owned(),
        any: deps.any,
        edges: deps
            .edges
            .iter()
            .zip(resolved)
            .filter_map(|(e, id)| Some((id.clone()?, e.clone())))
            .collect(),
    }
}

/// Orders names so that every job comes after the jobs it depends on (for applying a folder
/// of manifests); names on a cycle keep their relative order at the end.
pub fn topological<'a>(jobs: &[(&'a str, Vec<&'a str>)]) -> Vec<&'a str> {
    let known: HashSet<&str> = jobs.iter().map(|(n, _)| *n).collect();
    let mut done: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    loop {
        let before = out.len();
        for (name, ups) in jobs {
            if !done.contains(name)
                && ups
                    .iter()
                    .all(|u| !known.contains(u) || done.contains(u) || u == name)
            {
                done.insert(name);
                out.push(*name);
            }
        }
        if out.len() == jobs.len() {
            return out;
        }
        if out.len() == before {
            out.extend(jobs.iter().map(|(n, _)| *n).filter(|n| !done.contains(n)));
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dependency;

    fn run(status: ExecutionStatus, result: &str) -> UpstreamRun {
        UpstreamRun {
            job_name: "review diff".into(),
            execution_id: "e1".into(),
            status: Some(status),
            exit_code: Some(0),
            result: Some(result.into()),
            cost_usd: Some(0.25),
            duration_ms: Some(1200),
            ..Default::default()
        }
    }

    #[test]
    fn when_sees_the_upstream_and_its_json() {
        let r = run(ExecutionStatus::Completed, r#"{"issues": [1, 2]}"#);
        assert_eq!(eval_when("upstream.json.issues | length > 0", &r), Ok(true));
        assert_eq!(eval_when("json.issues | length > 5", &r), Ok(false));
        assert_eq!(
            eval_when("status == 'completed' and cost_usd < 1", &r),
            Ok(true)
        );
        let fenced = run(
            ExecutionStatus::Completed,
            "Here you are:\n```json\n{\"ok\": false}\n```\n",
        );
        assert_eq!(eval_when("not json.ok", &fenced), Ok(true));
        // A misspelt field is an error that names the expression, never a silent false.
        let e = eval_when("upstream.jsn.issues", &r).unwrap_err();
        assert!(e.contains("upstream.jsn.issues"), "{e}");
        // Text that is not JSON: `json` is none.
        let plain = run(ExecutionStatus::Completed, "no issues");
        assert_eq!(eval_when("json is none", &plain), Ok(true));
        assert_eq!(eval_when("'no issues' in result", &plain), Ok(true));
    }

    #[test]
    fn runaway_expressions_run_out_of_fuel() {
        let r = run(ExecutionStatus::Completed, "x");
        // A loop in a prompt runs out of fuel instead of running for ever.
        let e = render_prompt(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "p",
            &[],
            &[],
        )
        .unwrap_err();
        assert!(e.to_lowercase().contains("fuel"), "{e}");
        // Expressions have no loops; their largest inputs are bounded (ranges are capped).
        assert_eq!(
            eval_when("range(100000) | map('string') | join | length > 0", &r),
            Ok(true)
        );
        assert!(eval_when("range(100000000) | length > 0", &r).is_err());
        assert!(check_when("1 +").is_err());
        assert!(check_when(&"1 + ".repeat(2000)).is_err());
        assert!(check_when("status == 'completed'").is_ok());
    }

    #[test]
    fn prompts_use_results_by_name_with_a_cap() {
        let mut a = run(ExecutionStatus::Completed, "found 2 issues");
        a.execution_id = "ea".into();
        let mut big = run(
            ExecutionStatus::Completed,
            &"y".repeat(MAX_RESULT_IN_CONTEXT + 10),
        );
        big.job_name = "big".into();
        big.execution_id = "eb".into();
        let out = render_prompt(
            "Fix: {{ upstream['review diff'].result }} / {{ upstream.review_diff.status }} / {{ upstreams[0].job }} / {{ workflow.id }}",
            "p1",
            &[a.clone(), big.clone()],
            &["ea".into()],
        )
        .unwrap();
        assert_eq!(out, "Fix: found 2 issues / completed / review diff / p1");
        let out = render_prompt("{{ upstream.big.result }}", "p1", &[big], &[]).unwrap();
        assert!(
            out.ends_with("[truncated by cnp: 10 more bytes]"),
            "{}",
            &out[out.len() - 60..]
        );
        let e = render_prompt("{{ upstream.nope.result }}", "p1", &[a], &[]).unwrap_err();
        assert!(e.contains("prompt template"), "{e}");
    }

    #[test]
    fn verdicts_follow_on_and_when() {
        let ok = run(ExecutionStatus::Completed, "{\"n\": 0}");
        let failed = run(ExecutionStatus::Failed, "");
        assert!(edge_verdict(DependOn::Success, None, &ok).unwrap().0);
        assert!(!edge_verdict(DependOn::Success, None, &failed).unwrap().0);
        assert!(edge_verdict(DependOn::Failure, None, &failed).unwrap().0);
        assert!(edge_verdict(DependOn::Completed, None, &failed).unwrap().0);
        let skipped = run(ExecutionStatus::Skipped, "");
        assert!(!edge_verdict(DependOn::Completed, None, &skipped).unwrap().0);
        assert!(edge_verdict(DependOn::Always, None, &skipped).unwrap().0);
        let (sat, why) = edge_verdict(DependOn::Success, Some("json.n > 0"), &ok).unwrap();
        assert!(!sat);
        assert!(why.unwrap().contains("json.n > 0"));
        assert!(edge_verdict(DependOn::Success, Some("json.missing > 0"), &ok).is_err());
    }

    fn edge(job: &str) -> Dependency {
        Dependency {
            job: job.into(),
            on: DependOn::Success,
            when: None,
        }
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let mut g = Graph::default();
        // a → b → c
        g.set(
            "b",
            Some(Node {
                name: "b".into(),
                any: false,
                edges: vec![("a".into(), edge("a"))],
            }),
        );
        g.set(
            "c",
            Some(Node {
                name: "c".into(),
                any: false,
                edges: vec![("b".into(), edge("b"))],
            }),
        );
        assert_eq!(
            g.cycle_with("a", &["c".into()]),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(
            g.cycle_with("a", &["a".into()]),
            Some(vec!["a".into(), "a".into()])
        );
        assert_eq!(g.cycle_with("d", &["c".into()]), None);
        assert_eq!(
            g.reach("a"),
            HashSet::from(["a".into(), "b".into(), "c".into()])
        );
        g.set("c", None);
        assert!(!g.has_downstream("b"));
        assert_eq!(g.cycle_with("a", &["c".into()]), None);
    }

    #[test]
    fn topological_order_puts_upstreams_first() {
        let order = topological(&[
            ("d", vec!["b", "c"]),
            ("b", vec!["a"]),
            ("c", vec!["a"]),
            ("a", vec![]),
            ("x", vec!["elsewhere"]),
        ]);
        let pos = |n| order.iter().position(|x| *x == n).unwrap();
        assert!(pos("a") < pos("b") && pos("b") < pos("d") && pos("c") < pos("d"));
        assert_eq!(order.len(), 5);
        let cyc = topological(&[("p", vec!["q"]), ("q", vec!["p"])]);
        assert_eq!(cyc.len(), 2);
    }
}
