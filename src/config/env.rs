//! Environment overrides: key `section.name` is variable `SPAWNGATE_SECTION_NAME`.
//!
//! The keys and their types are not listed by hand: they are read off the default
//! [`RawConfig`] serialized to a TOML table (one entry per field, its TOML type is
//! the field's), so a field added to a raw section has its variable at once. A unit
//! test checks the list against the fields serde's `deny_unknown_fields` accepts,
//! which would catch a field that does not serialize.

use std::sync::OnceLock;

use super::{ConfigError, RawConfig, invalid};

/// Keys that were renamed, with their new names (a clear error beats "unknown key").
const RENAMED: &[(&str, &str)] = &[("login.token_ttl_minutes", "login.token_ttl_secs")];

/// Variables that start with `SPAWNGATE_` but are not config keys.
const NON_KEY_ENV: &[&str] = &["SPAWNGATE_CONFIG", "SPAWNGATE_LOG", "SPAWNGATE_LOG_FORMAT"];

/// How a variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    List,
}

struct Key {
    /// `section.name`.
    key: String,
    /// `SPAWNGATE_SECTION_NAME`.
    env: String,
    kind: Kind,
}

pub fn env_name(key: &str) -> String {
    format!("SPAWNGATE_{}", key.replace('.', "_").to_uppercase())
}

/// Every key that can be set, derived once.
fn keys() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(derive_keys)
}

fn derive_keys() -> Vec<Key> {
    // The defaults are plain strings, numbers, booleans and lists: serializing them
    // cannot fail (and the unit tests would show an empty list at once).
    let Ok(toml::Value::Table(sections)) = toml::Value::try_from(RawConfig::default()) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for (section, fields) in &sections {
        let Some(fields) = fields.as_table() else {
            continue;
        };
        for (field, value) in fields {
            let kind = match value {
                toml::Value::String(_) => Kind::Str,
                toml::Value::Integer(_) => Kind::Int,
                toml::Value::Float(_) => Kind::Float,
                toml::Value::Boolean(_) => Kind::Bool,
                toml::Value::Array(_) => Kind::List,
                toml::Value::Datetime(_) | toml::Value::Table(_) => continue,
            };
            let key = format!("{section}.{field}");
            keys.push(Key {
                env: env_name(&key),
                key,
                kind,
            });
        }
    }
    keys
}

/// A renamed key in the file is an error naming its successor.
pub(super) fn refuse_renamed(table: &toml::Table) -> Result<(), ConfigError> {
    for (old, new) in RENAMED {
        let (section, field) = old.split_once('.').unwrap_or((old, ""));
        if table
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(field))
        {
            return Err(invalid(old, format!("renamed: use {new}")));
        }
    }
    Ok(())
}

/// Writes the `SPAWNGATE_*` variables into `table` (over what the file said).
pub(super) fn apply(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        if !name.starts_with("SPAWNGATE_") || NON_KEY_ENV.contains(&name.as_str()) {
            continue;
        }
        if let Some((old, new)) = RENAMED.iter().find(|(old, _)| env_name(old) == name) {
            return Err(invalid(old, format!("renamed: use {}", env_name(new))));
        }
        let Some(key) = keys().iter().find(|k| k.env == name) else {
            return Err(ConfigError::UnknownEnv { name });
        };
        let parsed = parse_value(key, &value)?;
        let (section, field) = key.key.split_once('.').unwrap_or((&key.key, ""));
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table {
            toml::Value::Table(t) => {
                t.insert(field.to_owned(), parsed);
            }
            _ => return Err(invalid(section, "must be a table")),
        }
    }
    Ok(())
}

fn parse_value(key: &Key, value: &str) -> Result<toml::Value, ConfigError> {
    let bad = |what: &str| invalid(&key.key, format!("{}={value:?} is not {what}", key.env));
    Ok(match key.kind {
        Kind::Str => toml::Value::String(value.to_owned()),
        Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| bad("an integer"))?),
        Kind::Float => toml::Value::Float(value.trim().parse().map_err(|_| bad("a number"))?),
        Kind::Bool => match value.trim() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err(bad("a boolean (true/false)")),
        },
        Kind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::Config;

    /// The names serde accepts at `section` (`None`: the sections themselves), read
    /// off its unknown-field error ("unknown field `x`, expected one of `a`, `b`"):
    /// what the raw structs declare, independent of how they serialize.
    fn accepted(section: Option<&str>) -> BTreeSet<String> {
        let probe = match section {
            None => "zz_probe = 1".to_owned(),
            Some(s) => format!("[{s}]\nzz_probe = 1"),
        };
        let message = match toml::from_str::<RawConfig>(&probe) {
            Ok(_) => panic!("{probe:?} was accepted"),
            Err(e) => e.message().to_owned(),
        };
        let (_, expected) = message
            .split_once("expected")
            .unwrap_or_else(|| panic!("no field list in {message:?}"));
        // Quoted names sit between backticks: every odd piece.
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_raw_field_has_a_variable_and_every_variable_a_field() {
        let derived: BTreeSet<(String, String)> = keys()
            .iter()
            .map(|k| {
                let (s, f) = k.key.split_once('.').unwrap();
                (s.to_owned(), f.to_owned())
            })
            .collect();
        let sections = accepted(None);
        assert!(sections.len() >= 12, "{sections:?}");
        let mut declared = BTreeSet::new();
        for section in &sections {
            for field in accepted(Some(section)) {
                declared.insert((section.clone(), field));
            }
        }
        assert_eq!(derived, declared);
        // Types follow the fields.
        let kind = |key: &str| keys().iter().find(|k| k.key == key).map(|k| k.kind);
        assert_eq!(kind("docker.port"), Some(Kind::Int));
        assert_eq!(kind("docker.cpus"), Some(Kind::Float));
        assert_eq!(kind("docker.init"), Some(Kind::Bool));
        assert_eq!(kind("server.trusted_proxies"), Some(Kind::List));
        assert_eq!(kind("jwt.secret"), Some(Kind::Str));
        assert_eq!(kind("pool.size"), Some(Kind::Int));
    }

    #[test]
    fn every_key_has_a_working_env_override() {
        for key in keys() {
            let value = match key.kind {
                Kind::Str => "x",
                Kind::Int => "1",
                Kind::Float => "1.5",
                Kind::Bool => "true",
                Kind::List => "a,b",
            };
            // A value may fail validation, but never with "unknown" or a type error
            // about the structure: the key must exist in RawConfig.
            if let Err(e) = Config::from_sources("", [(key.env.clone(), value.to_owned())]) {
                let msg = e.to_string();
                assert!(!msg.contains("unknown"), "{}: {msg}", key.key);
                assert!(msg.contains(&key.key), "{}: {msg}", key.key);
            }
        }
    }

    #[test]
    fn values_of_the_wrong_type_name_the_variable() {
        let err = |name: &str, value: &str| {
            Config::from_sources("", [(name.to_owned(), value.to_owned())])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            err("SPAWNGATE_DOCKER_PORT", "eighty"),
            "invalid config: docker.port: SPAWNGATE_DOCKER_PORT=\"eighty\" is not an integer"
        );
        assert_eq!(
            err("SPAWNGATE_DOCKER_CPUS", "lots"),
            "invalid config: docker.cpus: SPAWNGATE_DOCKER_CPUS=\"lots\" is not a number"
        );
        assert_eq!(
            err("SPAWNGATE_LOGIN_PASSWORDS", "sure"),
            "invalid config: login.passwords: SPAWNGATE_LOGIN_PASSWORDS=\"sure\" is not a boolean (true/false)"
        );
        assert_eq!(
            err("SPAWNGATE_NOPE", "1"),
            "invalid config: unknown environment variable SPAWNGATE_NOPE (known keys: see README, section Configuration)"
        );
        let c = Config::from_sources(
            "",
            [(
                "SPAWNGATE_LIMITS_ALLOWED_IMAGES".to_owned(),
                " a:1, ,b:2 ".to_owned(),
            )],
        )
        .unwrap();
        assert_eq!(c.limits.allowed_images, ["a:1", "b:2"]);
    }
}
