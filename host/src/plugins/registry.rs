//! The plugins folder: `<name>.wasm` components with optional `<name>.toml` sidecars, loaded at
//! start and followed afterwards (drop-in, replacement, removal) without a restart. A file that
//! fails to load is reported (which file, why) and, if it replaced a working version, that
//! version stays in service.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;

use super::bindings::{self, CONDITION_VERSIONS, WIT_PACKAGE, WIT_VERSION};
use super::sandbox::HostRule;
use super::{Exports, Plugin, PluginHost, PluginKind, PluginLoadError};

/// Editors and copy tools write a file in several steps; changes are applied once the folder
/// has been quiet this long.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// A plugin's sidecar `<name>.toml`: the operator's defaults and grants for it.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Defaults for the plugin's configuration; a job's own `config` is merged over them.
    pub config: serde_json::Map<String, serde_json::Value>,
    pub allowed_hosts: Arc<[HostRule]>,
    pub allowed_hosts_text: Vec<String>,
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// The largest HTTP response body a call may read (`[limits] max_response_bytes`).
    pub max_response_bytes: usize,
}

/// An HTTP response body larger than this fails the read, unless the sidecar says otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarFile {
    /// Optional: pins the kind (checked against the component's exports).
    kind: Option<String>,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grants {
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_response_bytes: Option<u64>,
}

impl Sidecar {
    /// The configuration a call receives: the sidecar's defaults with the job's keys over them,
    /// as JSON text.
    pub fn merged_config(&self, job: Option<&serde_json::Value>) -> String {
        let job_keys = matches!(job, Some(serde_json::Value::Object(m)) if !m.is_empty());
        if self.config.is_empty() && !job_keys {
            return "{}".to_owned();
        }
        let mut merged = self.config.clone();
        if let Some(serde_json::Value::Object(job)) = job {
            for (k, v) in job {
                merged.insert(k.clone(), v.clone());
            }
        }
        serde_json::Value::Object(merged).to_string()
    }
}

impl PluginHost {
    /// Loads every `*.wasm` in the plugins folder (creating the folder if missing). Returns how
    /// many loaded; failures are logged and listed by [`PluginHost::load_errors`].
    pub async fn load_all(&self) -> usize {
        let Some(dir) = self.inner.dir.clone() else {
            return 0;
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugins folder");
            return 0;
        }
        let mut n = 0;
        for path in wasm_files(&dir) {
            if self.reload(&path).await {
                n += 1;
            }
        }
        n
    }

    /// (Re)loads `<stem>.wasm` after a change to it or its sidecar; removes the plugin when the
    /// component is gone. Returns whether a plugin is now loaded from it.
    pub async fn reload(&self, wasm: &Path) -> bool {
        let Some(name) = wasm.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            return false;
        };
        if !wasm.exists() {
            let removed = self.inner.plugins.write().unwrap().remove(&name).is_some();
            self.inner.errors.write().unwrap().remove(wasm);
            if removed {
                tracing::info!(plugin = %name, "plugin removed");
            }
            return false;
        }
        match self.load_file(&name, wasm).await {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %name, kind = %plugin.kind, from_cache = plugin.from_cache,
                    load_ms = plugin.load_time.as_secs_f64() * 1e3,
                    "plugin loaded"
                );
                self.inner.errors.write().unwrap().remove(wasm);
                self.inner
                    .plugins
                    .write()
                    .unwrap()
                    .insert(name, Arc::new(plugin));
                true
            }
            Err(message) => {
                let kept = self.inner.plugins.read().unwrap().contains_key(&name);
                tracing::error!(
                    file = %wasm.display(),
                    "plugin not loaded: {message}{}",
                    if kept { " (the previous version stays in service)" } else { "" }
                );
                self.inner.errors.write().unwrap().insert(
                    wasm.to_owned(),
                    PluginLoadError {
                        path: wasm.to_owned(),
                        message,
                        at: self.inner.clock.now(),
                    },
                );
                kept
            }
        }
    }

    /// Compiles (or loads from the cache), checks and pre-instantiates one component.
    pub(super) async fn load_file(&self, name: &str, wasm: &Path) -> Result<Plugin, String> {
        crate::manifest::validate_plugin_name("file name", name).map_err(|e| e.message)?;
        let started = Instant::now();
        let sidecar_path = wasm.with_extension("toml");
        let (sidecar, pinned_kind) = self.read_sidecar(&sidecar_path)?;
        let bytes = std::fs::read(wasm).map_err(|e| format!("cannot read: {e}"))?;
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err("not a WebAssembly file".into());
        }
        if bytes[4..8] != [0x0d, 0x00, 0x01, 0x00] {
            return Err(
                "a core WebAssembly module, not a component: build it for wasm32-wasip2 \
                 (see docs/plugin-authoring.md)"
                    .into(),
            );
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        let host = self.clone();
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            host.compile_cached(&bytes, &digest_key(&host, &bytes))
        })
        .await
        .map_err(|e| format!("compilation panicked: {e}"))??;
        let (kind, wit_version) = detect_kind(&self.inner.engine, &component)?;
        if let Some(k) = pinned_kind {
            if k != kind {
                return Err(format!(
                    "{}: kind = \"{k}\", but the component is a {kind} plugin",
                    sidecar_path.display()
                ));
            }
        }
        let pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            format!("cannot link: {e:#} (a plugin may import only what its world allows)")
        })?;
        let exports = match kind {
            PluginKind::RetryStrategy => {
                bindings::retry::GuestIndices::new(&pre).map(Exports::Retry)
            }
            PluginKind::Notifier => bindings::notify::GuestIndices::new(&pre).map(Exports::Notify),
            PluginKind::ConditionHook if wit_version == "0.2.0" => {
                bindings::condition_0_2::GuestIndices::new(&pre).map(Exports::Condition02)
            }
            PluginKind::ConditionHook => {
                bindings::condition::GuestIndices::new(&pre).map(Exports::Condition)
            }
            PluginKind::Executor => {
                bindings::execute::GuestIndices::new(&pre).map(Exports::Execute)
            }
        }
        .map_err(|e| format!("{e:#}"))?;
        let size_bytes = std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0);
        let plugin = Plugin {
            name: name.to_owned(),
            label: Arc::from(name),
            kind,
            wit_version,
            path: wasm.to_owned(),
            digest,
            size_bytes,
            loaded_at: self.inner.clock.now(),
            from_cache,
            load_time: started.elapsed(),
            sidecar,
            pre,
            exports,
        };
        Ok(plugin)
    }

    fn read_sidecar(&self, path: &Path) -> Result<(Sidecar, Option<PluginKind>), String> {
        let s = &self.inner.settings;
        let file: SidecarFile = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                let line = e
                    .span()
                    .map(|sp| format!(":{}", text[..sp.start].lines().count().max(1)))
                    .unwrap_or_default();
                format!("{}{line}: {}", path.display(), e.message())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SidecarFile::default(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let kind = match file.kind.as_deref() {
            None => None,
            Some("retry-strategy") => Some(PluginKind::RetryStrategy),
            Some("notifier") => Some(PluginKind::Notifier),
            Some("condition-hook") => Some(PluginKind::ConditionHook),
            Some("executor") => Some(PluginKind::Executor),
            Some(k) => {
                return Err(format!(
                "{}: kind: `{k}` is not one of retry-strategy, notifier, condition-hook, executor",
                path.display()
            ))
            }
        };
        let mut rules = Vec::new();
        for h in &file.grants.allowed_hosts {
            rules.push(
                HostRule::parse(h)
                    .map_err(|e| format!("{}: grants.allowed_hosts: {e}", path.display()))?,
            );
        }
        let timeout = match file.limits.timeout_ms {
            Some(0) => {
                return Err(format!(
                    "{}: limits.timeout_ms: must be at least 1",
                    path.display()
                ))
            }
            Some(ms) => Duration::from_millis(ms),
            None => s.call_timeout,
        };
        let memory_mb = match file.limits.memory_mb {
            Some(0) => {
                return Err(format!(
                    "{}: limits.memory_mb: must be at least 1",
                    path.display()
                ))
            }
            Some(mb) if mb > s.memory_limit_mb => {
                return Err(format!(
                    "{}: limits.memory_mb: {mb} is above the host's plugins.memory_limit_mb ({})",
                    path.display(),
                    s.memory_limit_mb
                ))
            }
            Some(mb) => mb,
            None => s.memory_limit_mb,
        };
        let max_response_bytes = match file.limits.max_response_bytes {
            Some(0) => {
                return Err(format!(
                    "{}: limits.max_response_bytes: must be at least 1",
                    path.display()
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => DEFAULT_MAX_RESPONSE_BYTES,
        };
        let config = match serde_json::to_value(&file.config) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        Ok((
            Sidecar {
                config,
                allowed_hosts: rules.into(),
                allowed_hosts_text: file.grants.allowed_hosts,
                timeout,
                memory_bytes: (memory_mb as usize) << 20,
                max_response_bytes,
            },
            kind,
        ))
    }

    /// The compiled component for `bytes`: from the cache when a valid artifact for this engine
    /// is there, else compiled now and written to the cache.
    fn compile_cached(&self, bytes: &[u8], key: &str) -> Result<(Component, bool), String> {
        let engine = &self.inner.engine;
        let cached = self
            .inner
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.cwasm")));
        if let Some(path) = &cached {
            if path.is_file() {
                // Read into memory rather than mapped: a cache file replaced or truncated by
                // someone else later cannot pull pages out from under a loaded plugin.
                let bytes = match std::fs::read(path) {
                    Ok(b) => b,
                    Err(e) => return Err(format!("cannot read the cached component: {e}")),
                };
                // SAFETY: the file is one cnp wrote itself (atomically, by rename) into its own
                // cache folder, named by the SHA-256 of the source component and of this engine's
                // compilation settings, so it is a wasmtime artifact for this very engine
                // configuration. wasmtime still checks its header and version and refuses a
                // mismatch (handled below).
                #[allow(unsafe_code)]
                match unsafe { Component::deserialize(engine, &bytes) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(cache = %path.display(), error = %e, "stale compiled plugin in the cache; recompiling");
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        let component =
            Component::new(engine, bytes).map_err(|e| format!("invalid component: {e:#}"))?;
        self.inner
            .compiles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(path) = &cached {
            if let Err(e) = write_cache(path, &component) {
                tracing::warn!(cache = %path.display(), error = %e, "cannot cache the compiled plugin");
            }
        }
        Ok((component, false))
    }

    /// Follows the plugins folder: loads new and replaced components (and sidecar edits),
    /// removes deleted ones. Runs until the host is dropped or `stop` fires.
    pub fn watch(&self, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        let Some(dir) = self.inner.dir.clone() else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let host = self.clone();
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = rx.recv() => match p { Some(p) => p, None => return },
                };
                let mut changed = BTreeSet::new();
                changed.insert(first);
                // Debounce: gather until the folder is quiet.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        p = rx.recv() => match p { Some(p) => { changed.insert(p); } None => return },
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                let stems: BTreeSet<PathBuf> = changed
                    .into_iter()
                    .filter(|p| is_plugin_file(p))
                    .map(|p| p.with_extension("wasm"))
                    .collect();
                for wasm in stems {
                    host.reload(&wasm).await;
                }
            }
        });
        tracing::info!(dir = %dir.display(), "watching the plugins folder");
        Ok(())
    }
}

fn digest_key(host: &PluginHost, bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    host.inner
        .engine
        .precompile_compatibility_hash()
        .hash(&mut h);
    let mut sha = Sha256::new();
    sha.update(bytes);
    sha.update(h.finish().to_le_bytes());
    sha.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(sha.finalize())
}

fn write_cache(path: &Path, component: &Component) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let bytes = component.serialize().map_err(super::wasm_err)?;
    // Unique per write: two loads of the same component at once never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `*.wasm` and `*.toml` files that are not hidden or editor leftovers.
fn is_plugin_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("wasm") | Some("toml")
    )
}

fn wasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm") && is_plugin_file(p))
        .collect();
    files.sort();
    files
}

/// The plugin kind from the component's exports, with the WIT version checked: retry and notify
/// are `0.1.0` (0.2 includes 0.1's worlds unchanged), condition `0.1.0` or `0.2.0`. Returns the
/// kind and the version of its exported interface.
fn detect_kind(
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<(PluginKind, &'static str), String> {
    let ty = component.component_type();
    let mut found = Vec::new();
    let base = format!("{}.{}.{}", WIT_VERSION.0, WIT_VERSION.1, WIT_VERSION.2);
    for (name, item) in ty.exports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let Some(kind) = PluginKind::from_interface(iface) else {
            continue;
        };
        let supported: &[&'static str] = match kind {
            PluginKind::ConditionHook => &CONDITION_VERSIONS,
            PluginKind::Executor => std::slice::from_ref(&bindings::EXECUTE_VERSION),
            _ => std::slice::from_ref(&bindings::WIT_VERSION_TEXT),
        };
        let Some(v) = supported.iter().find(|v| **v == version) else {
            let supports = match kind {
                PluginKind::ConditionHook => {
                    format!("{WIT_PACKAGE}@{base} (condition hooks: also {WIT_PACKAGE}@0.2.0)")
                }
                PluginKind::Executor => format!("{WIT_PACKAGE}@{}", bindings::EXECUTE_VERSION),
                _ => format!("{WIT_PACKAGE}@{base}"),
            };
            return Err(format!(
                "built against {WIT_PACKAGE}@{version}, but this cnp supports {supports}: \
                 rebuild the plugin with the matching cnp-plugin-sdk"
            ));
        };
        found.push((kind, *v));
    }
    match found.as_slice() {
        [k] => Ok(*k),
        [] => Err(format!(
            "exports none of {WIT_PACKAGE}/retry, /notify, /condition or /execute: not a cnp plugin \
             (build it with cnp-plugin-sdk and `register_plugin!`)"
        )),
        _ => Err(format!(
            "exports several plugin interfaces ({}); a plugin supplies exactly one kind",
            found
                .iter()
                .map(|(k, _)| k.interface())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
