//! Configuration: the layers (built-in defaults < TOML file < `PGSIDECAR_*` environment), how
//! they are merged, and how figment's errors and `_file` secrets are read.

use super::*;

/// Merges the layers, lowest first, and deserializes them.
pub fn load_raw(sources: &Sources) -> Result<RawConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = &sources.file {
        if let Err(source) = std::fs::metadata(path) {
            return Err(ConfigError::File {
                path: path.clone(),
                source,
            });
        }
        figment = figment.merge(NamedCopies(Toml::file_exact(path)));
    }
    // The environment must come after the file, or the file would silently win.
    let env = PrefixedEnv(
        sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_FILE_ENV)
            .cloned()
            .collect(),
    );
    figment = figment.merge(env);
    figment
        .extract::<RawConfig>()
        .map_err(|e| ConfigError::Parse(e.into_iter().map(describe_figment_error).collect()))
}

/// A file's `[[copies]]` array as the table `[copies.NAME]`, keyed by each entry's `name`: the
/// form the environment gives (`PGSIDECAR_COPIES__NAME__URL`), so the two merge key by key.
pub(super) struct NamedCopies<P>(pub P);

impl<P: figment::Provider> figment::Provider for NamedCopies<P> {
    fn metadata(&self) -> figment::Metadata {
        self.0.metadata()
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            if !matches!(dict.get("copies"), Some(Value::Array(..))) {
                continue;
            }
            let Some(Value::Array(tag, entries)) = dict.remove("copies") else {
                unreachable!("checked above");
            };
            let mut named = Dict::new();
            for (i, entry) in entries.into_iter().enumerate() {
                let name = match &entry {
                    Value::Dict(_, d) => match d.get("name") {
                        Some(Value::String(_, n)) => n.clone(),
                        _ => {
                            return Err(figment::Error::from(format!(
                                "copies[{i}] needs a `name` (a word such as `offsite`)"
                            )))
                        }
                    },
                    _ => {
                        return Err(figment::Error::from(format!(
                            "copies[{i}] is not a table: write [[copies]] with name, url and the keys of [storage]"
                        )))
                    }
                };
                if named.insert(name.clone(), entry).is_some() {
                    return Err(figment::Error::from(format!(
                        "copies: two entries are named `{name}`"
                    )));
                }
            }
            dict.insert("copies".into(), Value::Dict(tag, named));
        }
        Ok(data)
    }
}

/// `PGSIDECAR_SECTION__KEY=value` pairs as a figment provider. Like figment's own `Env`, but
/// over the pairs it is given rather than the process environment, so tests can set them.
pub(super) struct PrefixedEnv(Vec<(String, String)>);

impl figment::Provider for PrefixedEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace(ENV_SPLIT, ".");
            if key.is_empty() {
                continue;
            }
            if key.split('.').any(str::is_empty) {
                return Err(figment::Error::from(format!(
                    "environment variable {name} does not name a key (use PGSIDECAR_SECTION__KEY)"
                )));
            }
            let nested = figment::util::nest(&key, env_value(value))
                .into_dict()
                .expect("a key without empty segments nests into a dict");
            dict = merge_dicts(dict, nested);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// An environment value as figment would read it, except that a value whose text would change
/// (`007` read as 7, quotes or spaces stripped) stays the exact string: passwords must arrive
/// as typed.
pub(super) fn env_value(raw: &str) -> figment::value::Value {
    use figment::value::Value;
    let parsed: Value = raw.parse().expect("parsing a value is infallible");
    let same = match &parsed {
        Value::String(_, s) => s == raw,
        Value::Char(_, c) => c.to_string() == raw,
        Value::Bool(_, b) => b.to_string() == raw,
        Value::Num(_, n) => [
            n.to_u128().map(|v| v.to_string()),
            n.to_i128().map(|v| v.to_string()),
            n.to_f64().map(|v| v.to_string()),
        ]
        .iter()
        .flatten()
        .any(|t| t == raw),
        Value::Dict(..) | Value::Array(..) | Value::Empty(..) => true,
    };
    if same {
        parsed
    } else {
        Value::from(raw.to_string())
    }
}

pub(super) fn merge_dicts(
    mut a: figment::value::Dict,
    b: figment::value::Dict,
) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in b {
        let merged = match (a.remove(&k), v) {
            (Some(Value::Dict(_, x)), Value::Dict(tag, y)) => Value::Dict(tag, merge_dicts(x, y)),
            (_, v) => v,
        };
        a.insert(k, merged);
    }
    a
}

/// One line per bad value: the key, where it came from, and what is wrong with it.
pub(super) fn describe_figment_error(e: figment::Error) -> String {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let message = match &e.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_string()
        }
        Kind::InvalidType(actual, expected) => {
            // The actual value is not echoed: it may be a secret put under the wrong key.
            format!("expected {expected}, found {}", kind_of(actual))
        }
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let key = path.join(".");
    let source = match &e.metadata {
        Some(md) if md.name.contains(ENV_PREFIX) => {
            let parts: Vec<String> = path.iter().map(|p| p.to_ascii_uppercase()).collect();
            format!("environment variable {ENV_PREFIX}{}", parts.join(ENV_SPLIT))
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => format!("file {}", p.display()),
            _ => md.name.to_string(),
        },
        None => "configuration".to_string(),
    };
    if key.is_empty() {
        format!("  {source}: {message}")
    } else {
        format!("  `{key}` (from {source}): {message}")
    }
}

pub(super) fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another type",
    }
}

/// Reads a secret from a `<key>_file`, trimming the trailing newline editors and `echo` add.
pub(super) fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            &format!("{key}_file"),
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

pub(super) fn secret_value(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            key,
            format!("set either `{key}` or `{key}_file`, not both"),
        )),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(p)) => read_secret_file(key, p).map(Some),
        (None, None) => Ok(None),
    }
}

/// A secret whose absence is a valid choice (no Slack, an instance role instead of keys).
/// Blank means unset: a compose file's `${VAR:-}` gives an empty value, and Docker refuses an
/// empty secret, so "none" is stored as a lone newline. Not for the passphrase: a blank one
/// must stop the sidecar, not turn encryption off.
pub(super) fn optional_secret(
    key: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    Ok(secret_value(key, value, file)?.filter(|s| !s.expose().trim().is_empty()))
}
