//! Workflow passes: the list (`/ui/workflows`), a pass drawn as a graph
//! (`/ui/workflows/{id}`: server-made SVG, no script needed), and its cancel button.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use minijinja::{context, Value};

use super::{frame, render, see_other, view, PageError};
use crate::api::session::Session;
use crate::api::ApiState;
use crate::model::{ExecutionStatus, WorkflowPass};

/// Passes per page of the list.
const PER_PAGE: u32 = 25;

#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    job: Option<String>,
    page: Option<u32>,
}

/// Status of a node: its latest attempt's, or "waiting" while its upstreams are not decided.
fn node_status(s: Option<ExecutionStatus>) -> Value {
    match s {
        Some(s) => view::exec_status(s),
        None => context! { word => "waiting", mark => "○", class => "wait", value => "waiting" },
    }
}

fn pass_status(s: &str) -> Value {
    let (mark, class) = match s {
        "running" => ("▶", "run"),
        "finished" => ("✔", "ok"),
        "cancelled" => ("⊘", "muted"),
        _ => ("?", "muted"),
    };
    context! { word => s, mark, class, value => s }
}

pub async fn list(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let engine = st.engine();
    let store = engine.store();
    let tz = engine.settings().default_timezone;
    let page = q.page.unwrap_or(1).max(1);
    let wanted = q
        .job
        .as_deref()
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .map(str::to_owned);
    // The filter names a job by name or id; an unknown one lists nothing (and says so).
    let (job, unknown) = match &wanted {
        Some(j) => match store.job_id_and_name(j.clone()).await? {
            Some(found) => (Some(found), false),
            None => (None, true),
        },
        None => (None, false),
    };
    let job_id = job.as_ref().map(|(id, _)| id.clone());
    let (runs, total) = if unknown {
        (Vec::new(), 0)
    } else {
        tokio::try_join!(
            store.list_workflow_runs(job_id.clone(), PER_PAGE, (page - 1) * PER_PAGE),
            store.count_workflow_runs(job_id.clone()),
        )?
    };
    let rows: Vec<Value> = runs
        .iter()
        .map(|w| {
            let open = w
                .runs
                .iter()
                .any(|(s, n)| *n > 0 && ExecutionStatus::parse(s).is_some_and(|s| !s.is_terminal()));
            let status = if w.cancelled_at.is_some() {
                "cancelled"
            } else if open {
                "running"
            } else {
                "finished"
            };
            context! {
                id => w.id,
                root_job_id => w.root_job_id,
                root_job_name => w.root_job_name,
                root_execution_id => w.root_execution_id,
                started => view::time(w.created_at, tz),
                cancelled => w.cancelled_at.map(|t| view::time(t, tz)),
                status => pass_status(status),
                counts => w.runs.iter().filter(|(_, n)| **n > 0).map(|(s, n)| context! {
                    n => n,
                    status => ExecutionStatus::parse(s).map(view::exec_status)
                        .unwrap_or_else(|| context! { word => s, mark => "?", class => "muted", value => s }),
                }).collect::<Vec<_>>(),
            }
        })
        .collect();
    let pages = total.div_ceil(PER_PAGE as u64).max(1);
    let job_q = wanted
        .as_deref()
        .map(|j| format!("job={}&", view::url_encode(j)))
        .unwrap_or_default();
    render(
        "workflows.html",
        frame(&st, &s, "workflows"),
        context! {
            rows, total, page_no => page, pages,
            job => wanted,
            job_name => job.map(|(_, n)| n),
            unknown,
            prev => (page > 1).then(|| format!("/ui/workflows?{job_q}page={}", page - 1)),
            next => (u64::from(page) < pages).then(|| format!("/ui/workflows?{job_q}page={}", page + 1)),
            zone => tz.name(),
        },
    )
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct PassQuery {
    done: Option<String>,
}

pub async fn detail(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<PassQuery>,
) -> Result<Response, PageError> {
    let engine = st.engine();
    let tz = engine.settings().default_timezone;
    let pass = engine.workflow_pass(&id).await?;
    let names: HashMap<&str, &str> = pass
        .nodes
        .iter()
        .map(|n| (n.job_id.as_str(), n.name.as_str()))
        .collect();
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();
    let g = layout(&pass);
    let nodes: Vec<Value> = pass
        .nodes
        .iter()
        .zip(&g.nodes)
        .map(|(n, b)| {
            context! {
                job_id => n.job_id,
                name => n.name,
                short => shorten(&n.name, NAME_CHARS),
                status => node_status(n.status),
                execution_id => n.execution_id,
                attempts => n.attempts,
                reason => n.reason,
                depth => b.depth,
                upstreams => n.upstream_ids,
                x => b.x, y => b.y, w => NODE_W, h => NODE_H,
            }
        })
        .collect();
    let edges: Vec<Value> = pass
        .edges
        .iter()
        .zip(&g.edges)
        .map(|(e, d)| {
            let (class, verdict) = match e.satisfied {
                Some(true) => ("ok", "satisfied"),
                Some(false) => ("bad", "not satisfied"),
                None => ("open", "not decided yet"),
            };
            // Two short lines fit the gap between layers: `on`, then `when …` cut to fit.
            let label = e.on.as_str();
            let when_short = e.when.as_deref().map(|w| shorten(w, LABEL_CHARS));
            let mut title = format!(
                "{} → {}: on {}",
                name_of(&e.from),
                name_of(&e.to),
                e.on.as_str()
            );
            if let Some(w) = &e.when {
                title.push_str(&format!(" when {w}"));
            }
            title.push_str(&format!(" — {verdict}"));
            if let Some(r) = &e.reason {
                title.push_str(&format!(": {r}"));
            }
            context! {
                from => e.from, to => e.to,
                from_name => name_of(&e.from), to_name => name_of(&e.to),
                on => e.on.as_str(), when => e.when,
                satisfied => e.satisfied, reason => e.reason,
                class, verdict, label, when_short, title,
                path => d.path, lx => d.label_x, ly => d.label_y,
            }
        })
        .collect();
    let running = pass.status == "running";
    let job_ids: Vec<&str> = pass.nodes.iter().map(|n| n.job_id.as_str()).collect();
    render(
        "workflow.html",
        frame(&st, &s, "workflows"),
        context! {
            pass => context! {
                id => pass.id,
                root_job_id => pass.root_job_id,
                root_job_name => pass.root_job_name,
                root_execution_id => pass.root_execution_id,
                started => view::time(pass.created_at, tz),
                cancelled => pass.cancelled_at.map(|t| view::time(t, tz)),
                status => pass_status(&pass.status),
                running,
            },
            nodes, edges,
            width => g.width, height => g.height,
            job_ids => job_ids.join(" "),
            notice => match q.done.as_deref() {
                Some("cancelled") => Some("Pass cancelled: its queued and running runs are stopped."),
                _ => None,
            },
        },
    )
}

pub async fn cancel(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    st.engine().cancel_workflow(&id).await?;
    Ok(see_other(&format!(
        "/ui/workflows/{}?done=cancelled",
        view::url_encode(&id)
    )))
}

// ---------------------------------------------------------------------------------------------
// Layout: layers by longest path from the first job, left to right; an edge that spans
// layers passes through a slot in each layer between (so it does not run through nodes).

pub(super) const NODE_W: f64 = 210.0;
pub(super) const NODE_H: f64 = 62.0;
/// Space between layers (edges and their labels live there).
const GAP_X: f64 = 150.0;
const GAP_Y: f64 = 22.0;
/// Height of the slot a passing edge takes in a layer.
const LANE_H: f64 = 16.0;
const MARGIN: f64 = 12.0;
/// Characters of an edge's `when` its label shows (the tooltip and the table have it all).
const LABEL_CHARS: usize = 20;
/// Characters of a job name a node shows (the full name is in its tooltip and the table).
const NAME_CHARS: usize = 24;

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct NodeBox {
    pub depth: usize,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct EdgePath {
    /// An SVG path (numbers only).
    pub path: String,
    pub label_x: f64,
    pub label_y: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Layout {
    pub nodes: Vec<NodeBox>,
    pub edges: Vec<EdgePath>,
    pub width: f64,
    pub height: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Node(usize),
    /// Edge `e` passing through.
    Lane(usize),
}

/// Where each node and edge of a pass goes. Node `i` of the result is `pass.nodes[i]`, edge
/// `i` is `pass.edges[i]`.
pub(super) fn layout(pass: &WorkflowPass) -> Layout {
    let n = pass.nodes.len();
    let index: HashMap<&str, usize> = pass
        .nodes
        .iter()
        .enumerate()
        .map(|(i, x)| (x.job_id.as_str(), i))
        .collect();
    let edges: Vec<Option<(usize, usize)>> = pass
        .edges
        .iter()
        .map(|e| Some((*index.get(e.from.as_str())?, *index.get(e.to.as_str())?)))
        .map(|e| e.filter(|(a, b)| a != b))
        .collect();
    // Longest path from the first job (the graph is acyclic; the bound keeps a graph that is
    // not from looping). Nodes no edge reaches stay in the first layer after the root.
    let root = pass
        .root_job_id
        .as_deref()
        .and_then(|r| index.get(r).copied());
    let mut depth = vec![0usize; n];
    for (i, d) in depth.iter_mut().enumerate() {
        if Some(i) != root && root.is_some() {
            *d = 1;
        }
    }
    for _ in 0..n {
        let mut changed = false;
        for &(a, b) in edges.iter().flatten() {
            if depth[b] < depth[a] + 1 && depth[a] < n {
                depth[b] = depth[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let layers_n = depth.iter().copied().max().unwrap_or(0) + 1;
    let mut layers: Vec<Vec<Slot>> = vec![Vec::new(); layers_n];
    for (i, d) in depth.iter().enumerate() {
        layers[*d].push(Slot::Node(i));
    }
    // Forward edges through the layers between their ends; a lane's predecessor in the layer
    // before is the node or lane the edge came from.
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); edges.len()]; // layers of each lane
    for (ei, e) in edges.iter().enumerate() {
        if let Some((a, b)) = e {
            let (from, to) = (depth[*a] + 1, depth[*b]);
            for (l, layer) in layers.iter_mut().enumerate().take(to).skip(from) {
                layer.push(Slot::Lane(ei));
                lanes[ei].push(l);
            }
        }
    }
    // Order within layers: by the mean position of what feeds each slot (two sweeps down).
    let mut pos: HashMap<(usize, bool), f64> = HashMap::new(); // (node or edge, is_lane) -> pos
    let key = |s: Slot| match s {
        Slot::Node(i) => (i, false),
        Slot::Lane(e) => (e, true),
    };
    for _sweep in 0..2 {
        for (li, layer) in layers.iter_mut().enumerate() {
            for (p, s) in layer.iter().enumerate() {
                pos.entry(key(*s)).or_insert(p as f64);
            }
            if li == 0 {
                for (p, s) in layer.iter().enumerate() {
                    pos.insert(key(*s), p as f64);
                }
                continue;
            }
            let feeders = |s: Slot| -> Vec<f64> {
                match s {
                    Slot::Lane(e) => {
                        let (a, _) = edges[e].unwrap();
                        let prev = li - 1;
                        if depth[a] == prev {
                            vec![pos[&(a, false)]]
                        } else {
                            vec![pos[&(e, true)]]
                        }
                    }
                    Slot::Node(i) => edges
                        .iter()
                        .enumerate()
                        .filter_map(|(ei, e)| {
                            let (a, b) = (*e)?;
                            (b == i).then(|| {
                                if depth[a] + 1 == li {
                                    pos.get(&(a, false)).copied()
                                } else if lanes[ei].last() == Some(&(li - 1)) {
                                    pos.get(&(ei, true)).copied()
                                } else {
                                    None
                                }
                            })?
                        })
                        .collect(),
                }
            };
            let mut keyed: Vec<(f64, usize, Slot)> = layer
                .iter()
                .enumerate()
                .map(|(p, s)| {
                    let f = feeders(*s);
                    let bary = if f.is_empty() {
                        p as f64
                    } else {
                        f.iter().sum::<f64>() / f.len() as f64
                    };
                    (bary, p, *s)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            *layer = keyed.into_iter().map(|(_, _, s)| s).collect();
            for (p, s) in layer.iter().enumerate() {
                pos.insert(key(*s), p as f64);
            }
        }
    }
    // Coordinates: each layer a column, centred on the tallest.
    let slot_h = |s: &Slot| match s {
        Slot::Node(_) => NODE_H,
        Slot::Lane(_) => LANE_H,
    };
    let col_h: Vec<f64> = layers
        .iter()
        .map(|l| l.iter().map(slot_h).sum::<f64>() + GAP_Y * l.len().saturating_sub(1) as f64)
        .collect();
    let tallest = col_h.iter().copied().fold(0.0, f64::max);
    let mut node_at = vec![
        NodeBox {
            depth: 0,
            x: 0.0,
            y: 0.0
        };
        n
    ];
    let mut lane_y: HashMap<(usize, usize), f64> = HashMap::new(); // (edge, layer) -> centre y
    for (li, layer) in layers.iter().enumerate() {
        let x = MARGIN + li as f64 * (NODE_W + GAP_X);
        let mut y = MARGIN + (tallest - col_h[li]) / 2.0;
        for s in layer {
            match s {
                Slot::Node(i) => node_at[*i] = NodeBox { depth: li, x, y },
                Slot::Lane(e) => {
                    lane_y.insert((*e, li), y + LANE_H / 2.0);
                }
            }
            y += slot_h(s) + GAP_Y;
        }
    }
    let curve = |x1: f64, y1: f64, x2: f64, y2: f64| -> String {
        let m = (x1 + x2) / 2.0;
        format!("C{m:.1},{y1:.1} {m:.1},{y2:.1} {x2:.1},{y2:.1}")
    };
    let edge_paths: Vec<EdgePath> = edges
        .iter()
        .enumerate()
        .map(|(ei, e)| {
            let Some((a, b)) = *e else {
                return EdgePath {
                    path: String::new(),
                    label_x: 0.0,
                    label_y: 0.0,
                };
            };
            let (na, nb) = (&node_at[a], &node_at[b]);
            let (mut x, mut y) = (na.x + NODE_W, na.y + NODE_H / 2.0);
            let mut d = format!("M{x:.1},{y:.1}");
            if nb.depth <= na.depth {
                // Not forward (a graph changed since): a plain line.
                let (x2, y2) = (nb.x, nb.y + NODE_H / 2.0);
                d.push_str(&format!(" L{x2:.1},{y2:.1}"));
                return EdgePath {
                    path: d,
                    label_x: (x + x2) / 2.0,
                    label_y: (y + y2) / 2.0 - 4.0,
                };
            }
            for l in &lanes[ei] {
                let ly = lane_y[&(ei, *l)];
                let lx = MARGIN + *l as f64 * (NODE_W + GAP_X);
                d.push(' ');
                d.push_str(&curve(x, y, lx, ly));
                d.push_str(&format!(" L{:.1},{ly:.1}", lx + NODE_W));
                x = lx + NODE_W;
                y = ly;
            }
            let (x2, y2) = (nb.x, nb.y + NODE_H / 2.0);
            d.push(' ');
            d.push_str(&curve(x, y, x2 - 6.0, y2));
            EdgePath {
                path: d,
                label_x: (x + x2) / 2.0,
                label_y: (y + y2) / 2.0 - 8.0,
            }
        })
        .collect();
    Layout {
        nodes: node_at,
        edges: edge_paths,
        width: 2.0 * MARGIN + layers_n as f64 * NODE_W + (layers_n - 1) as f64 * GAP_X,
        height: 2.0 * MARGIN + tallest.max(NODE_H),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DependOn, PassEdgeView, PassNode};

    fn pass(nodes: &[&str], edges: &[(&str, &str)]) -> WorkflowPass {
        WorkflowPass {
            id: "p".into(),
            root_job_id: Some(nodes[0].into()),
            root_job_name: Some(nodes[0].into()),
            root_execution_id: "e".into(),
            created_at: chrono::Utc::now(),
            cancelled_at: None,
            status: "running".into(),
            nodes: nodes
                .iter()
                .map(|n| PassNode {
                    job_id: (*n).into(),
                    name: (*n).into(),
                    status: None,
                    execution_id: None,
                    attempts: 0,
                    reason: None,
                    upstream_ids: vec![],
                })
                .collect(),
            edges: edges
                .iter()
                .map(|(a, b)| PassEdgeView {
                    from: (*a).into(),
                    to: (*b).into(),
                    on: DependOn::Success,
                    when: None,
                    satisfied: None,
                    reason: None,
                })
                .collect(),
        }
    }

    #[test]
    fn layers_are_the_longest_path_from_the_first_job() {
        // review → fix → tests → summary, and review → summary.
        let p = pass(
            &["review", "fix", "tests", "summary"],
            &[
                ("review", "fix"),
                ("fix", "tests"),
                ("tests", "summary"),
                ("review", "summary"),
            ],
        );
        let l = layout(&p);
        let depths: Vec<usize> = l.nodes.iter().map(|b| b.depth).collect();
        assert_eq!(depths, vec![0, 1, 2, 3]);
        // The long edge passes through lanes (a curve per gap), not through fix and tests.
        assert_eq!(
            l.edges[3].path.matches('C').count(),
            3,
            "{}",
            l.edges[3].path
        );
        assert!(l.width > 3.0 * (NODE_W + GAP_X));
    }

    #[test]
    fn a_diamond_has_two_nodes_in_the_middle_layer() {
        let p = pass(
            &["a", "b", "c", "d"],
            &[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        );
        let l = layout(&p);
        assert_eq!(l.nodes[1].depth, 1);
        assert_eq!(l.nodes[2].depth, 1);
        assert_eq!(l.nodes[3].depth, 2);
        assert_ne!(l.nodes[1].y, l.nodes[2].y);
        assert_eq!(l.nodes[1].x, l.nodes[2].x);
        // a and d are centred between b and c.
        let mid = (l.nodes[1].y + l.nodes[2].y) / 2.0;
        assert!((l.nodes[0].y - mid).abs() < 0.01);
        assert!((l.nodes[3].y - mid).abs() < 0.01);
        assert!(l.edges.iter().all(|e| e.path.starts_with('M')));
    }

    #[test]
    fn fifty_nodes_and_a_cycle_stay_bounded() {
        let names: Vec<String> = (0..50).map(|i| format!("j{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut edges: Vec<(&str, &str)> = (1..50).map(|i| (refs[0], refs[i])).collect();
        edges.push((refs[2], refs[1]));
        edges.push((refs[1], refs[2])); // a cycle (cannot be saved; must not hang)
        let l = layout(&pass(&refs, &edges));
        assert_eq!(l.nodes.len(), 50);
        assert!(l.height.is_finite() && l.width.is_finite());
    }
}
