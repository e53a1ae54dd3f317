//! Configuration: the database connection, from explicit keys, `database.url` and libpq's
//! environment variables (in that order of precedence).

use super::*;

pub(super) fn validate_database(
    raw: RawDatabase,
    sources: &Sources,
) -> Result<DatabaseConfig, ConfigError> {
    // Precedence: explicit `database.*` keys, then `database.url`, then libpq's variables.
    let url = optional_secret(
        "database.url",
        raw.url,
        raw.url_file.as_deref().map(Path::new),
    )?;
    let from_url = match &url {
        Some(u) => Some(parse_database_url(u)?),
        None => None,
    };
    let from_url = from_url.unwrap_or_default();

    let host = raw
        .host
        .or(from_url.host)
        .or_else(|| sources.var("PGHOST").map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string());
    if host.starts_with('/') {
        return Err(ConfigError::invalid(
            "database.host",
            format!("`{host}` is a Unix socket directory; pgsidecar connects over TCP: give a host name"),
        ));
    }
    let port = match raw.port.or(from_url.port) {
        Some(p) => p,
        None => match sources.var("PGPORT") {
            Some(p) => p.parse().map_err(|_| ConfigError::Invalid {
                key: "database.port".into(),
                source_name: Some("environment variable PGPORT".into()),
                message: format!("`{p}` is not a port number"),
            })?,
            None => 5432,
        },
    };
    let user = raw
        .user
        .or(from_url.user)
        .or_else(|| sources.var("PGUSER").map(str::to_string))
        .unwrap_or_else(|| "postgres".to_string());
    let dbname = raw
        .dbname
        .or(from_url.dbname)
        .or_else(|| sources.var("PGDATABASE").map(str::to_string))
        .unwrap_or_else(|| user.clone());
    let sslmode_text = raw
        .sslmode
        .or(from_url.sslmode)
        .or_else(|| sources.var("PGSSLMODE").map(str::to_string))
        .unwrap_or_else(|| "prefer".to_string());
    let sslmode = match sslmode_text.as_str() {
        "disable" => SslMode::Disable,
        "prefer" | "allow" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(ConfigError::invalid(
                "database.sslmode",
                format!("`{other}` is not an sslmode (disable, allow, prefer, require, verify-ca, verify-full)"),
            ))
        }
    };
    let sslrootcert = raw
        .sslrootcert
        .or(from_url.sslrootcert)
        .or_else(|| sources.var("PGSSLROOTCERT").map(PathBuf::from));
    if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
        match &sslrootcert {
            None => {
                return Err(ConfigError::invalid(
                    "database.sslrootcert",
                    format!("is required with sslmode `{sslmode_text}`: the CA certificate the server's certificate must chain to (PGSIDECAR_DATABASE__SSLROOTCERT)"),
                ))
            }
            Some(p) if !p.is_file() => {
                return Err(ConfigError::invalid(
                    "database.sslrootcert",
                    format!("`{}` is not a readable file", p.display()),
                ))
            }
            Some(_) => {}
        }
    }
    let mut password = optional_secret(
        "database.password",
        raw.password,
        raw.password_file.as_deref(),
    )?
    .or(from_url.password)
    .or_else(|| sources.var("PGPASSWORD").map(Secret::new));
    if password.is_none() {
        let passfile = raw
            .passfile
            .or_else(|| sources.var("PGPASSFILE").map(PathBuf::from))
            .or_else(|| sources.var("HOME").map(|h| Path::new(h).join(".pgpass")));
        if let Some(path) = passfile {
            password = crate::source::pgpass::lookup(&path, &host, port, &dbname, &user);
        }
    }
    let tls = crate::source::tls::Connector::new(sslmode, sslrootcert.as_deref())
        .map_err(|e| ConfigError::invalid("database.sslrootcert", e.to_string()))?;
    Ok(DatabaseConfig {
        tls,
        host,
        port,
        user,
        password,
        dbname,
        sslmode,
        sslrootcert,
        connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(10)),
    })
}

#[derive(Default)]
pub(super) struct UrlParts {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
}

/// Parses `postgres://user:pass@host:port/db?sslmode=…`. Errors never quote the URL: it may
/// hold a password.
pub(super) fn parse_database_url(url: &Secret) -> Result<UrlParts, ConfigError> {
    let parsed = url::Url::parse(url.expose())
        .map_err(|e| ConfigError::invalid("database.url", format!("not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::invalid(
            "database.url",
            format!(
                "scheme `{}` is not supported: use postgres://user:password@host:port/database",
                parsed.scheme()
            ),
        ));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut parts = UrlParts {
        host: parsed.host_str().filter(|h| !h.is_empty()).map(decode),
        port: parsed.port(),
        user: Some(parsed.username())
            .filter(|u| !u.is_empty())
            .map(decode),
        password: parsed.password().map(|p| Secret::new(decode(p))),
        dbname: Some(parsed.path().trim_start_matches('/'))
            .filter(|d| !d.is_empty())
            .map(decode),
        sslmode: None,
        sslrootcert: None,
    };
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "sslmode" => parts.sslmode = Some(v.into_owned()),
            "sslrootcert" => parts.sslrootcert = Some(PathBuf::from(v.into_owned())),
            "host" => parts.host = Some(v.into_owned()),
            "port" => {
                parts.port = Some(v.parse().map_err(|_| {
                    ConfigError::invalid("database.url", format!("port `{v}` is not a number"))
                })?)
            }
            "user" => parts.user = Some(v.into_owned()),
            "dbname" => parts.dbname = Some(v.into_owned()),
            "application_name" | "connect_timeout" => {}
            other => {
                return Err(ConfigError::invalid(
                    "database.url",
                    format!("parameter `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(parts)
}
