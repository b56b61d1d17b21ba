//! Parsing a plugin's configuration.
//!
//! The host passes the configuration as JSON text: the plugin's sidecar `[config]` defaults with
//! the job's own `config` merged over them. The SDK parses it before calling your trait, so you
//! rarely call [`parse`] yourself; it is public for tests and for plugins that take a second,
//! nested configuration.
//!
//! Give your `Config` type `#[serde(default)]` so a configuration that sets only some fields
//! works, and `#[serde(deny_unknown_fields)]` so a misspelt field is reported rather than
//! ignored.

use crate::PluginError;
use serde::de::DeserializeOwned;

/// Parses configuration JSON text into `T`.
///
/// Empty (or all-whitespace) text, `null` and `{}` give `T::default()`. Any other text must
/// deserialize into `T`; otherwise the error is [`PluginError::InvalidConfig`] naming the field
/// path and the position, for example
/// ``config field `base_ms`: invalid type: string "x", expected u64 at line 1 column 15``.
pub fn parse<T: DeserializeOwned + Default>(text: &str) -> Result<T, PluginError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(T::default());
    }
    // A first pass checks the JSON itself (including trailing characters) and spots `{}`.
    let value: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| invalid("", &e))?;
    if value.as_object().is_some_and(|fields| fields.is_empty()) {
        return Ok(T::default());
    }
    // The second pass parses the text (not the `Value`) so errors keep their line and column.
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let parsed = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| invalid(&e.path().to_string(), e.inner()))?;
    Ok(parsed)
}

fn invalid(path: &str, error: &serde_json::Error) -> PluginError {
    if path.is_empty() || path == "." {
        PluginError::InvalidConfig(format!("config: {error}"))
    } else {
        PluginError::InvalidConfig(format!("config field `{path}`: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        base_ms: u64,
        name: Option<String>,
    }

    #[test]
    fn empty_text_null_and_empty_object_give_the_default() {
        for text in ["", "  \n", "null", "{}", " { } "] {
            assert_eq!(
                parse::<Config>(text).unwrap(),
                Config::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn fields_parse() {
        let c: Config = parse(r#"{"base_ms": 5, "name": "x"}"#).unwrap();
        assert_eq!(
            c,
            Config {
                base_ms: 5,
                name: Some("x".into())
            }
        );
    }

    #[test]
    fn errors_name_the_field_and_position() {
        let e = parse::<Config>(r#"{"base_ms": "x"}"#).unwrap_err();
        let PluginError::InvalidConfig(m) = e else {
            panic!("{e:?}")
        };
        assert!(m.contains("`base_ms`") && m.contains("line 1"), "{m}");

        let e = parse::<Config>(r#"{"bse_ms": 1}"#).unwrap_err();
        assert!(e.message().contains("unknown field `bse_ms`"), "{e}");

        let e = parse::<Config>("{").unwrap_err();
        assert!(e.message().starts_with("config: "), "{e}");
    }
}
