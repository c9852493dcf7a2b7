//! A real registry for tests: Debian's `docker-registry` (distribution 2.8)
//! on a free loopback port, storing into a temporary folder, killed on drop.
//!
//! Include it from a test crate with
//!
//! ```ignore
//! #[path = "common/registry.rs"]
//! mod registry_harness;
//! use registry_harness::TestRegistry;
//! ```
//!
//! Loopback registries are plain HTTP, which bake accepts without flags;
//! skopeo needs `--tls-verify=false` (see [`TestRegistry::skopeo_digest`]).
//! [`TestRegistry::start_with_auth`] adds htpasswd (Basic) auth with
//! [`USER`] / [`PASSWORD`].

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The user of [`TestRegistry::start_with_auth`].
pub const USER: &str = "bake";
/// Its password.
pub const PASSWORD: &str = "bake-secret";
/// bcrypt (cost 4) of [`PASSWORD`], as `htpasswd -B` writes it; distribution
/// reads only bcrypt.
const PASSWORD_BCRYPT: &str = "$2b$04$M5YoJOIQ985X8rrWAdzGU.BiyKGq3gOl2/4OdEp1tat1ZehaaW6wa";

/// How long a registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `docker-registry`.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Arc<Mutex<Option<Child>>>,
    auth: bool,
}

/// A handle that kills the registry from anywhere (a progress callback, a
/// thread), for fault tests.
#[derive(Clone)]
pub struct KillSwitch(Arc<Mutex<Option<Child>>>);

impl KillSwitch {
    /// Kills the registry (SIGKILL) and waits for it; a no-op once it is dead.
    pub fn kill(&self) {
        let mut child = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TestRegistry {
    /// Starts a registry without auth. Panics (failing the test) if
    /// `docker-registry` is missing or does not come up.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts a registry that wants Basic auth as [`USER`] / [`PASSWORD`].
    pub fn start_with_auth() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(auth: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("bake-test-registry").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
        if auth {
            std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{PASSWORD_BCRYPT}\n")).expect("htpasswd");
        }
        let mut registry = Self { addr: String::new(), port: 0, dir, child: Arc::new(Mutex::new(None)), auth };
        // distribution cannot listen on port 0: pick a free port, release it,
        // start the registry on it, and try another if someone took it meanwhile.
        for _ in 0..10 {
            let port = free_port();
            if registry.launch(port) {
                return registry;
            }
        }
        panic!("could not start docker-registry; log:\n{}", registry.log());
    }

    /// Writes the config for `port` and starts the process; true once it answers.
    fn launch(&mut self, port: u16) -> bool {
        let root = self.dir.path();
        let auth = if self.auth {
            format!("auth:\n  htpasswd:\n    realm: bake-test\n    path: {}\n", root.join("htpasswd").display())
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            root.join("storage").display()
        );
        std::fs::write(root.join("config.yml"), config).expect("registry config");
        let log = std::fs::File::create(root.join("log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(root.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        *self.lock() = Some(child);
        self.port = port;
        self.addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.http("GET", "/v2/").is_some_and(|(status, _)| status == 200 || status == 401) {
                return true;
            }
            let exited = self.lock().as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                // Most likely the port was taken between probe and start.
                self.lock().take();
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kills the registry (SIGKILL); its storage stays for [`restart`](Self::restart).
    pub fn kill(&self) {
        self.kill_switch().kill();
    }

    /// Stops the registry; an alias of [`kill`](Self::kill).
    pub fn stop(&self) {
        self.kill();
    }

    /// A handle that kills this registry.
    pub fn kill_switch(&self) -> KillSwitch {
        KillSwitch(Arc::clone(&self.child))
    }

    /// Starts the registry again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        for _ in 0..50 {
            if self.launch(port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart docker-registry on port {port}; log:\n{}", self.log());
    }

    /// The storage folder.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A Docker `config.json` with this registry's credentials, in the
    /// registry's temp folder; for `Credentials::File`.
    pub fn docker_config(&self) -> PathBuf {
        let path = self.dir.path().join("docker-config.json");
        let auth = base64(format!("{USER}:{PASSWORD}").as_bytes());
        std::fs::write(&path, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr))
            .expect("docker config");
        path
    }

    /// One plain HTTP/1.0 request: status and body, or `None` if nothing answers.
    pub fn http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr.parse().ok()?, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let auth = if self.auth {
            format!("Authorization: Basic {}\r\n", base64(format!("{USER}:{PASSWORD}").as_bytes()))
        } else {
            String::new()
        };
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: {accept}\r\n{auth}\r\n", self.addr).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        Some((status, body))
    }

    /// The tags of a repository (empty when it has none or does not exist).
    pub fn tags(&self, repository: &str) -> Vec<String> {
        let Some((200, body)) = self.http("GET", &format!("/v2/{repository}/tags/list")) else { return Vec::new() };
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        value["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// The manifest digest `skopeo inspect` reports for `repository:tag` (or
    /// `repository@digest`), or `None` when skopeo finds nothing.
    pub fn skopeo_digest(&self, reference: &str) -> Option<String> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--creds={USER}:{PASSWORD}"));
        }
        let out = cmd.arg(format!("docker://{}/{reference}", self.addr)).output().expect("skopeo must be installed");
        if !out.status.success() {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        value["Digest"].as_str().map(str::to_owned)
    }

    /// The raw manifest skopeo fetches for a reference.
    pub fn skopeo_raw(&self, reference: &str) -> Option<Vec<u8>> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--creds={USER}:{PASSWORD}"));
        }
        let out = cmd.arg(format!("docker://{}/{reference}", self.addr)).output().expect("skopeo must be installed");
        out.status.success().then_some(out.stdout)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
