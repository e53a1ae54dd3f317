//! Local S3 servers (moto, s3s-fs) and an SDK client to look at what the sidecar stored.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::{env_path, free_port, on_exit, unique, wait_for_port};

/// A local S3 server: moto (shared by the tests), or s3s-fs, a second implementation.
pub struct S3 {
    pub port: u16,
    child: Mutex<std::process::Child>,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

static SHARED_S3: OnceLock<S3> = OnceLock::new();

/// The S3 server shared by the tests.
pub fn s3() -> &'static S3 {
    SHARED_S3.get_or_init(S3::start)
}

impl S3 {
    /// Starts a moto server of its own (for tests that stop it).
    pub fn start() -> S3 {
        let port = free_port();
        let mut cmd = Command::new(env_path("PGSC_TEST_MOTO"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        S3::serve(cmd, port, "moto S3 server")
    }

    /// Starts s3s-fs, storing its objects in a temp directory removed at exit.
    pub fn start_s3s_fs() -> S3 {
        let port = free_port();
        let root = tempfile::tempdir().unwrap().keep();
        on_exit(&format!("rm -rf '{}'", root.display()));
        let mut cmd = Command::new(env_path("PGSC_TEST_S3S_FS"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(&root);
        S3::serve(cmd, port, "s3s-fs S3 server")
    }

    /// Starts s3s-fs as [`S3::start_s3s_fs`] does, and returns the directory it keeps its objects
    /// in: it cannot list multipart uploads, so a test looks for them there.
    pub fn start_s3s_fs_with_root() -> (S3, PathBuf) {
        let port = free_port();
        let root = tempfile::tempdir().unwrap().keep();
        on_exit(&format!("rm -rf '{}'", root.display()));
        let mut cmd = Command::new(env_path("PGSC_TEST_S3S_FS"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(&root);
        (S3::serve(cmd, port, "s3s-fs S3 server"), root)
    }

    fn serve(mut cmd: Command, port: u16, what: &str) -> S3 {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        on_exit(&format!("kill {} 2>/dev/null", child.id()));
        wait_for_port(port, what);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "harness",
            ))
            .build();
        S3 {
            port,
            child: Mutex::new(child),
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Creates a bucket with a unique name and returns it.
    pub fn bucket(&self, hint: &str) -> String {
        let name = unique(hint).replace('_', "-");
        self.rt
            .block_on(self.client.create_bucket().bucket(&name).send())
            .unwrap();
        name
    }

    /// A bucket created with object lock (and so versioning) enabled.
    pub fn bucket_with_lock(&self, hint: &str) -> String {
        let name = unique(hint).replace('_', "-");
        self.rt
            .block_on(
                self.client
                    .create_bucket()
                    .bucket(&name)
                    .object_lock_enabled_for_bucket(true)
                    .send(),
            )
            .unwrap();
        name
    }

    /// The object's user metadata, tags and headers as text (to search for leaks).
    pub fn metadata(&self, bucket: &str, key: &str) -> String {
        self.rt.block_on(async {
            let head = self
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let tags = self
                .client
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map(|t| format!("{:?}", t.tag_set()))
                .unwrap_or_default();
            format!("{:?} {:?} {tags}", head.metadata(), head.content_type())
        })
    }

    /// IDs of the bucket's lifecycle rules.
    pub fn lifecycle_rule_ids(&self, bucket: &str) -> Vec<String> {
        self.rt
            .block_on(
                self.client
                    .get_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .send(),
            )
            .map(|out| {
                out.rules()
                    .iter()
                    .filter_map(|r| r.id().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(
                self.client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .send(),
            )
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap().into_bytes().to_vec()
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body.to_vec().into())
                    .send(),
            )
            .unwrap();
    }

    /// Deletes one object.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt
            .block_on(self.client.delete_object().bucket(bucket).key(key).send())
            .unwrap();
    }

    /// Keys of multipart uploads not yet completed or aborted.
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(bucket).send())
            .unwrap();
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }
}

/// Decompresses a zstd object.
pub fn unzstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(data).expect("valid zstd")
}
