//! PostgreSQL client tools (`pg_dump`, later `pg_restore`): finding them and choosing the one
//! that fits a server. pg_dump refuses servers of a newer major, so the check happens before a
//! dump starts, with a message that says which client to install, never at 2 AM mid-dump.

use std::path::{Path, PathBuf};

/// Errors finding a usable client tool. All are permanent for a given server.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("no `{tool}` found in {searched}: install the PostgreSQL {server_major} client tools or set tools.bin_dirs (PGSIDECAR_TOOLS__BIN_DIRS)")]
    NotFound {
        tool: String,
        searched: String,
        server_major: u32,
    },
    #[error("`{tool}` {found} is older than the server (PostgreSQL {server_major}) and cannot dump it: install the PostgreSQL {server_major} client tools (or newer) and point tools.bin_dirs (PGSIDECAR_TOOLS__BIN_DIRS) at them, or, in the image, build it with `--build-arg PG_MAJORS=\"17 {server_major}\"`")]
    TooOld {
        tool: String,
        found: String,
        server_major: u32,
    },
    #[error("the backup was written by pg_dump {archive_major}, and only pg_restore {archive_major} or newer can read it; the newest pg_restore found is {found}: install the PostgreSQL {archive_major} client tools (or newer) and point tools.bin_dirs (PGSIDECAR_TOOLS__BIN_DIRS) at them")]
    ArchiveTooNew { archive_major: u32, found: String },
    #[error("cannot run `{}` --version: {source}", .path.display())]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the version of `{}` from {output:?}", .path.display())]
    Version { path: PathBuf, output: String },
}

/// One installed client tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTool {
    pub path: PathBuf,
    /// As printed, e.g. `17.2`.
    pub version: String,
    pub major: u32,
}

/// Directories searched when `tools.bin_dirs` is empty: the versioned client directories of
/// Debian (`/usr/lib/postgresql/<major>/bin`) and Alpine (`/usr/libexec/postgresql<major>`),
/// newest first, then `PATH`.
pub fn default_dirs() -> Vec<PathBuf> {
    let listed = |dir: &str, map: fn(PathBuf) -> PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| map(e.path())).collect())
            .unwrap_or_default()
    };
    let mut dirs = listed("/usr/lib/postgresql", |p| p.join("bin"));
    dirs.extend(listed("/usr/libexec", |p| p).into_iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("postgresql"))
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    }));
    // Newest major first: compare the numbers, not the text ("9" sorts after "18").
    let major = |p: &PathBuf| -> u32 {
        p.to_string_lossy()
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    dirs.sort_by_key(|p| std::cmp::Reverse(major(p)));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Parses `pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)` into (`17.2`, 17).
pub fn parse_version(output: &str) -> Option<(String, u32)> {
    let version = output
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let version = version.trim_end_matches(|c: char| !c.is_ascii_digit());
    let major: u32 = version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()?;
    Some((version.to_string(), major))
}

async fn probe(path: &Path) -> Result<ClientTool, ToolError> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(|source| ToolError::Run {
            path: path.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (version, major) = parse_version(&text).ok_or_else(|| ToolError::Version {
        path: path.to_path_buf(),
        output: text.clone(),
    })?;
    Ok(ClientTool {
        path: path.to_path_buf(),
        version,
        major,
    })
}

/// Every installed copy of `tool` in `dirs` (or the default places), with its version.
pub async fn discover(tool: &str, dirs: &[PathBuf]) -> Result<Vec<ClientTool>, ToolError> {
    let dirs = if dirs.is_empty() {
        default_dirs()
    } else {
        dirs.to_vec()
    };
    let mut found: Vec<ClientTool> = Vec::new();
    for dir in &dirs {
        let candidate = dir.join(tool);
        if !candidate.is_file() {
            continue;
        }
        // One broken copy on the search path must not hide a good one elsewhere.
        let t = match probe(&candidate).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("skipping {}: {e}", candidate.display());
                continue;
            }
        };
        if !found.iter().any(|f| f.major == t.major) {
            found.push(t);
        }
    }
    if found.is_empty() {
        return Err(ToolError::NotFound {
            tool: tool.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            server_major: 0,
        });
    }
    Ok(found)
}

/// The tool for a server of `server_major`: the same major if installed (its output is what
/// that server's own tools produce), else the newest one newer than the server.
pub fn choose(
    tool: &str,
    found: &[ClientTool],
    server_major: u32,
) -> Result<ClientTool, ToolError> {
    if let Some(t) = found.iter().find(|t| t.major == server_major) {
        return Ok(t.clone());
    }
    if let Some(t) = found
        .iter()
        .filter(|t| t.major > server_major)
        .max_by_key(|t| t.major)
    {
        return Ok(t.clone());
    }
    let newest = found
        .iter()
        .max_by_key(|t| t.major)
        .map(|t| format!("{} ({})", t.version, t.path.display()))
        .unwrap_or_default();
    Err(ToolError::TooOld {
        tool: tool.to_string(),
        found: newest,
        server_major,
    })
}

/// The `pg_restore` for an archive written by pg_dump `archive_major` into a server of
/// `server_major`. It must be at least as new as the archive. Among those, the newest not newer
/// than the server is preferred: newer clients emit settings older servers reject (pg_restore
/// 17 sends `SET transaction_timeout`). Otherwise the oldest newer one.
pub fn choose_for_restore(
    found: &[ClientTool],
    archive_major: u32,
    server_major: u32,
) -> Result<ClientTool, ToolError> {
    let readable = found.iter().filter(|t| t.major >= archive_major);
    let best = readable
        .clone()
        .filter(|t| t.major <= server_major)
        .max_by_key(|t| t.major)
        .or_else(|| readable.min_by_key(|t| t.major));
    best.cloned().ok_or_else(|| ToolError::ArchiveTooNew {
        archive_major,
        found: found
            .iter()
            .max_by_key(|t| t.major)
            .map(|t| format!("{} ({})", t.version, t.path.display()))
            .unwrap_or_default(),
    })
}

/// Finds and chooses `tool` for a server of `server_major`.
pub async fn for_server(
    tool: &str,
    dirs: &[PathBuf],
    server_major: u32,
) -> Result<ClientTool, ToolError> {
    let found = discover(tool, dirs).await.map_err(|e| match e {
        ToolError::NotFound { tool, searched, .. } => ToolError::NotFound {
            tool,
            searched,
            server_major,
        },
        other => other,
    })?;
    choose(tool, &found, server_major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)"),
            Some(("17.2".into(), 17))
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 18.6"),
            Some(("18.6".into(), 18))
        );
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 18beta1"),
            Some(("18beta1".into(), 18))
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    fn tool(major: u32) -> ClientTool {
        ClientTool {
            path: PathBuf::from(format!("/pg/{major}/pg_dump")),
            version: format!("{major}.1"),
            major,
        }
    }

    #[test]
    fn restore_tool_reads_the_archive_and_fits_the_server() {
        let found = [tool(15), tool(17), tool(18)];
        let pick = |archive, server| choose_for_restore(&found, archive, server).map(|t| t.major);
        assert_eq!(pick(15, 15).unwrap(), 15);
        assert_eq!(pick(15, 16).unwrap(), 15);
        assert_eq!(pick(15, 18).unwrap(), 18);
        assert_eq!(pick(17, 15).unwrap(), 17, "only 17+ reads a 17 archive");
        assert_eq!(pick(16, 16).unwrap(), 17);
        let err = choose_for_restore(&[tool(15)], 17, 17)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only pg_restore 17 or newer can read it"),
            "{err}"
        );
    }

    #[test]
    fn chooses_matching_then_newest() {
        let found = [tool(15), tool(17), tool(18)];
        assert_eq!(choose("pg_dump", &found, 17).unwrap().major, 17);
        assert_eq!(choose("pg_dump", &found, 16).unwrap().major, 18);
        assert_eq!(choose("pg_dump", &found, 13).unwrap().major, 18);
        let err = choose("pg_dump", &[tool(15)], 17).unwrap_err().to_string();
        assert!(
            err.contains("older than the server (PostgreSQL 17)"),
            "{err}"
        );
        assert!(err.contains("PostgreSQL 17 client tools"), "{err}");
    }
}
