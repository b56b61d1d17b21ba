//! `type: plugin`: a notifier plugin (WebAssembly) delivers the event.

use super::Outcome;
use crate::plugins::{NotifyEvent, PluginHost};

pub async fn deliver(
    host: Option<&PluginHost>,
    name: &str,
    config: Option<&serde_json::Value>,
    event: &NotifyEvent,
) -> Outcome {
    let Some(host) = host else {
        return Outcome::failed(
            format!("notifier plugin `{name}` not asked: plugins are disabled"),
            0,
        );
    };
    match host.deliver(name, config, event).await {
        Ok(receipt) => Outcome::ok(receipt, 1),
        Err(f) => Outcome::failed(f.to_string(), 1),
    }
}
