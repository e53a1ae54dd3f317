use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var("PGSC_TEST_VENV")
        .expect("PGSC_TEST_VENV is not set: run the tests through scripts/test.sh (see README)");
    Path::new(&venv).join("bin").join(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn dockerfile_passes_hadolint_without_warnings() {
    let out = run_ok(Command::new(venv_tool("hadolint")).arg(repo("Dockerfile")));
    assert!(out.trim().is_empty(), "hadolint said:\n{out}");
}

#[test]
fn compose_files_follow_the_compose_spec() {
    for file in ["compose.yml", "swarm-stack.yml"] {
        run_ok(
            Command::new(venv_tool("check-jsonschema"))
                .args(["--builtin-schema", "vendor.compose-spec"])
                .arg(repo(file)),
        );
    }
}

#[test]
fn release_workflow_passes_actionlint() {
    // actionlint runs shellcheck on the workflow's `run:` steps when it is on PATH.
    let out = run_ok(
        Command::new(venv_tool("actionlint"))
            .arg("-color=false")
            .arg(repo(".github/workflows/release.yml")),
    );
    assert!(out.trim().is_empty(), "actionlint said:\n{out}");
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let scripts = [
        "scripts/test.sh",
        "scripts/test-deps.sh",
        "scripts/base-image.sh",
        "scripts/e2e.sh",
        "tests/e2e/lib.sh",
        "tests/e2e/compose.sh",
        "tests/e2e/swarm.sh",
        "tests/e2e/images/postgres/docker-entrypoint.sh",
        ".ci/run",
    ];
    let out = run_ok(
        Command::new("shellcheck")
            .current_dir(repo(""))
            .args(["--external-sources", "--severity=warning"])
            .args(scripts),
    );
    assert!(out.trim().is_empty(), "shellcheck said:\n{out}");
}

/// `PGSIDECAR_*` names in a text.
fn variable_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("PGSIDECAR_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `PGSIDECAR_STORAGE__TAGS__<NAME>` and the like describe a pattern, not a name.
        if !tail[end..].starts_with('<') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

/// Names used by the files around the configuration that are not configuration keys.
const NOT_KEYS: &[&str] = &[
    // compose.yml's image tag.
    "PGSIDECAR_IMAGE",
    // compose.yml's container name.
    "PGSIDECAR_CONTAINER_NAME",
    // compose.yml's build argument: the image with the PostgreSQL server.
    "PGSIDECAR_PG_SERVER",
    // The configuration file's path.
    "PGSIDECAR_CONFIG",
    // The README's explanation of the naming scheme.
    "PGSIDECAR_SECTION__KEY",
    // The README's explanation of the naming scheme.
    "PGSIDECAR_",
];

#[test]
fn every_variable_in_the_docs_and_compose_files_is_a_configuration_key() {
    let mut unknown = Vec::new();
    let mut checked = 0;
    for file in [
        "compose.yml",
        "swarm-stack.yml",
        ".env.example",
        "README.md",
        "docs/S3.md",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        for name in variable_names(&text) {
            if NOT_KEYS.contains(&name.as_str()) {
                continue;
            }
            checked += 1;
            let sources = pgsidecar::config::Sources {
                file: None,
                env: vec![
                    ("PGSIDECAR_STORAGE__URL".into(), "s3://bucket/prefix".into()),
                    (name.clone(), "1".into()),
                ],
            };
            if let Err(e) = pgsidecar::config::load(&sources) {
                if e.to_string().contains("unknown key") {
                    unknown.push(format!("{file}: {name}: {e}"));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} names found");
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn the_image_links_every_command_name_to_the_binary() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let line = dockerfile
        .lines()
        .find(|l| l.contains("ln -s pgsidecar"))
        .expect("the Dockerfile links the command names");
    let names: Vec<&str> = line
        .split(" in ")
        .nth(1)
        .and_then(|l| l.split(';').next())
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(names, pgsidecar::cli::MULTI_CALL);
    // Each name, as a link to the binary, runs its command (no shell involved).
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgsidecar"), &link).unwrap();
        let out = Command::new(&link).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help failed");
        assert!(
            help.contains(&format!("pgsidecar {name}")),
            "{name} --help does not describe `pgsidecar {name}`:\n{help}"
        );
    }
}
