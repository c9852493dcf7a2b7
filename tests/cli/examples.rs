//! Every project in `examples/` end to end, as a user with internet access
//! would build it: its `build.kdl` names `golang:1.19`, `gcc:12`, `busybox`
//! and `debian:bookworm-slim`, and bake pulls them from "docker.io".
//!
//! There is no Docker Hub here, so each test starts a real registry (Debian's
//! `docker-registry`), has `scripts/fixtures.sh publish` push the base images
//! it needs there under their usual names (`library/golang:1.19` ...), and
//! gives bake a config file that mirrors docker.io to it, with a fresh
//! `BAKE_HOME`. The example is copied to a temporary folder (so nothing is
//! written into the repository) and built by the real binary; its images go
//! into a real Docker engine (Debian's docker.io, started if needed), which
//! runs them, and the output is asserted. Each final image is compared with
//! the builder stage it came from, built on its own by name: it must be
//! smaller.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::docker;
use crate::harness::{Run, root};
use crate::images::run;
use crate::registry::TestRegistry;

/// One example, built against a registry that stands in for docker.io.
pub(crate) struct Example {
    /// A copy of `examples/NAME`.
    dir: tempfile::TempDir,
    /// The fresh `BAKE_HOME`, with `config.kdl` in it.
    pub(crate) home: tempfile::TempDir,
    /// Serves `library/*` as docker.io's mirror; the tests may push to it too.
    registry: TestRegistry,
}

/// The fixture store is shared by every test: publishing is one at a time, so
/// that two tests never both build a toolchain image the first time.
pub(crate) static PUBLISH: Mutex<()> = Mutex::new(());

impl Example {
    /// Starts a registry holding the base `images` (names from
    /// `scripts/fixtures.sh publish`: busybox, debian, gcc, golang) and copies
    /// `examples/NAME` to a temporary folder.
    pub(crate) fn new(name: &str, images: &[&str]) -> Self {
        let registry = TestRegistry::start();
        {
            let _one = PUBLISH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            run(Command::new(root().join("scripts/fixtures.sh"))
                .arg("publish")
                .arg(&registry.addr)
                .args(images)
                .env("BAKE", crate::harness::bake_bin())
                .env_remove("BAKE_CONFIG"));
        }
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            home.path().join("config.kdl"),
            format!("registry \"docker.io\" {{\n    mirror \"{}\"\n}}\n", registry.addr),
        )
        .expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(&root().join("examples").join(name), dir.path());
        Self { dir, home, registry }
    }

    /// `bake ARGS` in the example's folder.
    fn bake(&self, args: &[&str]) -> Run {
        let out = self.command(crate::harness::bake_bin()).args(args).output().expect("run bake");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `bake ARGS`, which must succeed.
    pub(crate) fn bake_ok(&self, args: &[&str]) -> Run {
        let r = self.bake(args);
        assert_eq!(r.code, 0, "bake {}:\n{}", args.join(" "), r.render());
        r
    }

    /// A command run in the example's folder with its BAKE_HOME and config.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path())
            .env("BAKE_HOME", self.home.path())
            .env("BAKE_CONFIG", self.home.path().join("config.kdl"))
            .env("NO_COLOR", "1")
            .env("COLUMNS", "80")
            .env_remove("CLICOLOR_FORCE");
        cmd
    }

    /// Builds `names` and loads the images among them into Docker.
    fn build_and_load(&self, names: &[&str]) -> Run {
        let archive = self.dir.path().join("images.tar");
        let dest = format!("type=docker,dest={}", archive.display());
        let mut args = vec!["build"];
        args.extend_from_slice(names);
        args.extend(["-o", &dest]);
        let built = self.bake_ok(&args);
        docker::load(&archive);
        built
    }

    /// The compressed size `bake images` shows for an image of the store.
    fn size(&self, name: &str) -> f64 {
        let images = self.bake_ok(&["images"]).stdout;
        let line = images
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no image {name} in:\n{images}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let n: f64 = fields[2].parse().unwrap_or_else(|_| panic!("size in {line}"));
        n * match fields[3] {
            "B" => 1.0,
            "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            unit => panic!("unit {unit} in {line}"),
        }
    }

    /// Asserts that the final image is smaller than the stage it was built
    /// from. That stage is built on its own, by name, which keeps it in the
    /// store as an image (its steps are cached: nothing runs again).
    fn assert_smaller(&self, image: &str, builder: &str) -> (f64, f64) {
        self.assert_smaller_set(image, builder, &[])
    }

    /// [`assert_smaller`](Self::assert_smaller) for a build made with `--set` args.
    fn assert_smaller_set(&self, image: &str, builder: &str, sets: &[&str]) -> (f64, f64) {
        let mut args = vec!["build", builder];
        args.extend_from_slice(sets);
        let again = self.bake_ok(&args);
        assert!(again.stderr.contains(" 0 steps run"), "{builder} was built already:\n{}", again.stderr);
        let (small, big) = (self.size(image), self.size(builder));
        assert!(small < big, "{image} ({small} B) is not smaller than {builder} ({big} B)");
        eprintln!("size: {image} {:.1} MB < {builder} {:.1} MB", small / 1e6, big / 1e6);
        (small, big)
    }
}

/// Copies a folder's files (not its `target` or build outputs) recursively.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// A container started with `docker run -d`, removed on drop.
struct Container(String);

impl Container {
    fn start(args: &[&str]) -> Self {
        docker::start();
        let mut run = vec!["run", "-d", "--network", "host"];
        run.extend_from_slice(args);
        let id = docker::ok(&run);
        Self(id.trim().to_owned())
    }

    fn logs(&self) -> String {
        let out = docker::output(&["logs", &self.0]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker::output(&["rm", "-f", &self.0]);
    }
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One HTTP/1.0 GET to 127.0.0.1:port: status line and body, or `None`
/// when nothing answers.
fn http_get(port: u16, path: &str, headers: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// Polls `GET path` every 50 ms until the server answers, for at most 30 s.
fn wait_for_http(container: &Container, port: u16, path: &str, headers: &str) -> (String, String) {
    let start = Instant::now();
    loop {
        if let Some(answer) = http_get(port, path, headers) {
            return answer;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing answered on port {port} within 30 s; container log:\n{}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `docker image inspect -f FORMAT IMAGE`.
fn inspect(image: &str, format: &str) -> String {
    docker::ok(&["image", "inspect", "-f", format, image]).trim().to_owned()
}

#[test]
fn hello_c_ships_only_the_binary_on_a_slim_base() {
    let ex = Example::new("hello-c", &["debian", "gcc"]);
    let built = ex.build_and_load(&["hello"]);
    assert!(built.stderr.contains("pull     docker.io/library/gcc:12"), "{}", built.stderr);
    assert_eq!(docker::run(&["hello-c:latest"]), "hello from a multi-stage C build\n");
    // No compiler and no source in the final image.
    let look = docker::run(&[
        "hello-c:latest",
        "sh",
        "-c",
        "command -v cc make || echo no-toolchain; test -e /src || echo no-source",
    ]);
    assert_eq!(look, "no-toolchain\nno-source\n");
    ex.assert_smaller("hello", "compiler");
}

#[test]
fn hello_go_ships_one_binary_on_busybox_and_on_scratch() {
    let ex = Example::new("hello-go", &["busybox", "golang"]);
    ex.build_and_load(&["hello-busybox", "hello-scratch"]);
    assert_eq!(docker::run(&["hello-busybox:latest"]), "Hello world!\n");
    assert_eq!(docker::run(&["hello-scratch:latest"]), "Hello world!\n");
    // Exec form: scratch has no shell to run a shell-form entrypoint.
    assert_eq!(inspect("hello-scratch:latest", "{{json .Config.Entrypoint}}"), r#"["/hello"]"#);
    let (busybox, _) = ex.assert_smaller("hello-busybox", "builder");
    let (scratch, _) = ex.assert_smaller("hello-scratch", "builder");
    assert!(scratch < busybox, "scratch {scratch} B, busybox {busybox} B");
}

#[test]
fn four_stage_skips_the_test_stage_unless_it_is_named() {
    let ex = Example::new("four-stage", &["busybox"]);
    let built = ex.build_and_load(&[]);
    assert!(!built.stderr.contains("test:"), "the default build ran the test stage:\n{}", built.stderr);
    assert_eq!(docker::run(&["four-stage:latest"]), "base: runtime dependencies installed\nbuild: built by app.sh\n");
    // Named, the test stage runs, and is kept as an image called `test`,
    // which `bake run` runs in bake's sandbox, and Docker too.
    let tested = ex.build_and_load(&["test"]);
    assert!(tested.stderr.contains("test: run grep"), "{}", tested.stderr);
    assert_eq!(ex.bake_ok(&["run", "test", "--", "cat", "/build/test.txt"]).stdout, "test: tests passed\n");
    assert_eq!(docker::run(&["test:latest", "cat", "/build/test.txt"]), "test: tests passed\n");
    // Nothing of the test stage reached the final image.
    assert_eq!(docker::run(&["four-stage:latest", "sh", "-c", "ls /build /opt 2>/dev/null || echo none"]), "none\n");
    ex.assert_smaller("app", "build");
}

#[test]
fn whoami_answers_http_on_the_port_given_with_its_flag() {
    let ex = Example::new("whoami", &["golang"]);
    let built = ex.build_and_load(&["whoami"]);
    // Dependencies are downloaded in their own step, before the source is copied.
    let order: Vec<usize> = ["copy go.mod", "run go mod download", "copy main.go", "run go build"]
        .iter()
        .map(|step| built.stderr.find(step).unwrap_or_else(|| panic!("no {step:?} in:\n{}", built.stderr)))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "steps out of order:\n{}", built.stderr);
    assert_eq!(inspect("whoami:latest", "{{json .Config.ExposedPorts}}"), r#"{"8080/tcp":{}}"#);
    assert_eq!(inspect("whoami:latest", "{{.Config.User}}"), "65532:65532");

    let port = free_port();
    let server = Container::start(&["whoami:latest", "-port", &port.to_string(), "-name", "bake-e2e"]);
    let (status, body) = wait_for_http(&server, port, "/bake/test?x=1", "X-Bake-Test: e2e\r\n");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    for needle in
        ["Name: bake-e2e\n", "Hostname: ", "IP: 127.0.0.1\n", "GET /bake/test?x=1 HTTP/1.0\n", "X-Bake-Test: e2e\n"]
    {
        assert!(body.contains(needle), "no {needle:?} in:\n{body}");
    }
    ex.assert_smaller("whoami", "builder");
}

#[test]
fn bookstore_renders_templates_from_the_context_and_the_builder() {
    let ex = Example::new("bookstore", &["busybox", "golang"]);
    ex.build_and_load(&["bookstore"]);
    let port = free_port();
    let server = Container::start(&["bookstore:latest", "-port", &port.to_string()]);
    let (status, body) = wait_for_http(&server, port, "/", "");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    // index.tmpl, copied from the build context ...
    assert!(
        body.contains("<li>The Go Programming Language, by Alan Donovan and Brian Kernighan (2015)</li>"),
        "{body}"
    );
    // ... and footer.tmpl, which the build stage generated.
    assert!(body.contains("<footer>built with go1.19"), "{body}");
    assert!(body.contains("by the build stage</footer>"), "{body}");
    ex.assert_smaller("bookstore", "build");
}

#[test]
fn monorepo_builds_ten_services_from_one_shared_builder() {
    let ex = Example::new("monorepo", &["golang"]);
    let services: Vec<String> = std::fs::read_dir(ex.dir.path().join("services"))
        .expect("services")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(services.len() >= 10, "{services:?}");
    let built = ex.build_and_load(&[]);
    // One toolchain, pulled once, one shared stage.
    assert_eq!(built.stderr.matches("pull     docker.io/library/golang:1.19").count(), 1, "{}", built.stderr);
    for service in &services {
        let said = docker::run(&[&format!("monorepo/{service}:latest")]);
        assert!(said.starts_with(&format!("{service} service (go1.19")), "{service}: {said}");
    }
    for service in &services {
        ex.assert_smaller(service, &format!("{service}-build"));
    }
}

#[test]
fn release_pipeline_tests_then_pushes_version_and_latest() {
    let ex = Example::new("release", &["golang"]);
    let addr = ex.registry.addr.clone();
    // The release is signed with a key of its own.
    let key = ex.dir.path().join("release-key.pem");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&key));
    let pipeline = |version: &str| {
        ex.command(ex.dir.path().join("release.sh"))
            .env("SIGN_KEY", &key)
            .env("BAKE", crate::harness::bake_bin())
            .env("REGISTRY", &addr)
            .env("VERSION", version)
            .output()
            .expect("release.sh")
    };
    let out = pipeline("1.2.3");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("cache    ") && log.contains("exported to"), "no cache export:\n{log}");
    assert!(log.contains("--- PASS: TestGreeting"), "{log}");
    let mut tags = ex.registry.tags("acme/app");
    tags.sort();
    // The image's provenance is attached by default (its referrers tag), and
    // the image is signed (its signature tag).
    let digest = ex.registry.skopeo_digest("acme/app:1.2.3").expect("the pushed image");
    let attached = [digest.replace(':', "-"), format!("{}.sig", digest.replace(':', "-"))];
    assert_eq!(tags, ["1.2.3", "latest", &attached[0], &attached[1]]);
    assert_eq!(ex.registry.skopeo_digest("acme/app:1.2.3"), ex.registry.skopeo_digest("acme/app:latest"));

    // Docker pulls what was pushed and runs it.
    docker::start();
    let image = format!("{addr}/acme/app:1.2.3");
    docker::ok(&["pull", &image]);
    assert_eq!(docker::run(&[&image, "-name", "release"]), "hello, release, from app 1.2.3\n");
    assert_eq!(inspect(&image, r#"{{index .Config.Labels "org.opencontainers.image.version"}}"#), "1.2.3");
    let _ = docker::output(&["rmi", &image]);
    ex.assert_smaller_set("app", "builder", &["--set", "VERSION=1.2.3"]);

    // Another CI machine (an empty store) runs the same release: every step
    // comes from the registry cache, and the same image is pushed.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::copy(ex.home.path().join("config.kdl"), other.path().join("config.kdl")).expect("config");
    let again = ex
        .command(ex.dir.path().join("release.sh"))
        .env("BAKE", crate::harness::bake_bin())
        .env("REGISTRY", &addr)
        .env("VERSION", "1.2.3")
        .env("BAKE_HOME", other.path())
        .env("BAKE_CONFIG", other.path().join("config.kdl"))
        .output()
        .expect("release.sh");
    let log = format!("{}{}", String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(again.status.success(), "{log}");
    assert!(log.contains("--- PASS: TestGreeting"), "the cached test report was not written:\n{log}");
    assert_eq!(log.matches("built in").count(), 2, "{log}");
    assert_eq!(log.matches(": 0 steps run").count(), 2, "a step ran on the second machine:\n{log}");

    // A failing test stops the pipeline before anything is pushed.
    let test = ex.dir.path().join("greet_test.go");
    let source = std::fs::read_to_string(&test).expect("read");
    std::fs::write(&test, source.replace("hello, ci, from app", "goodbye, ci, from app")).expect("write");
    let failed = pipeline("1.2.4");
    assert!(!failed.status.success(), "the pipeline passed with a failing test");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--- FAIL: TestGreeting"));
    let mut tags = ex.registry.tags("acme/app");
    tags.sort();
    assert_eq!(tags, ["1.2.3", "latest", &attached[0], &attached[1]], "a failed release pushed something");
}

/// The examples this file tests, so that a new one cannot be forgotten; and
/// the book's tutorial shows each one's `build.kdl` word for word.
#[test]
fn every_example_is_tested_here_and_shown_in_the_tutorial() {
    let tested = ["bookstore", "devloop", "four-stage", "hello-c", "hello-go", "monorepo", "release", "whoami"];
    let mut found: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, tested);
    let tutorial = std::fs::read_to_string(root().join("book/src/tutorial.md")).expect("tutorial");
    for name in tested {
        let dir: PathBuf = root().join("examples").join(name);
        assert!(dir.join("README.md").is_file(), "{name} has no README.md");
        let build = std::fs::read_to_string(dir.join("build.kdl")).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The development loop has its own chapter.
        let page = if name == "devloop" { "devloop.md" } else { "tutorial.md" };
        let text = std::fs::read_to_string(root().join("book/src").join(page)).expect("page");
        assert!(text.contains(&build), "book/src/{page} does not show examples/{name}/build.kdl as it is");
    }
    let service = std::fs::read_to_string(root().join("examples/monorepo/services/api/build.kdl")).expect("api");
    assert!(tutorial.contains(&service), "book/src/tutorial.md does not show services/api/build.kdl as it is");
}

/// `bake watch` running in the background, stopped (SIGINT, as Ctrl-C) on drop.
struct Watching {
    child: std::process::Child,
    log: PathBuf,
}

impl Watching {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `ok` every 50 ms for at most `limit`; fails with the log.
    fn wait(&self, what: &str, limit: Duration, ok: impl Fn() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}; bake watch said:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_rebuilds_and_restarts_the_devloop_server() {
    let ex = Example::new("devloop", &["golang"]);
    let port = free_port();
    let log = ex.dir.path().join("watch.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = ex
        .command(crate::harness::bake_bin())
        .args(["watch", "--run", "devloop", "--stop-timeout", "5", "--", "-port", &port.to_string()])
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("bake watch");
    let w = Watching { child, log };
    let page = || http_get(port, "/", "").map(|(_, body)| body).unwrap_or_default();
    w.wait("the first build serves", Duration::from_mins(5), || page().contains("Hello from the development loop"));

    // A template: one copy, no compile; the restarted server shows it.
    let dir = ex.dir.path();
    let template = dir.join("templates/index.html");
    let text = std::fs::read_to_string(&template).expect("template");
    std::fs::write(&template, text.replace("<h1>", "<h1 class=\"edited\">")).expect("write");
    w.wait("the template edit is served", Duration::from_mins(1), || page().contains("class=\"edited\""));
    assert!(w.log().contains("watch: changed templates/index.html"), "{}", w.log());
    assert!(w.log().contains("1 step ran"), "a template edit ran more than its copy:\n{}", w.log());

    // Go source: recompiled, restarted.
    let main = dir.join("main.go");
    let source = std::fs::read_to_string(&main).expect("main.go");
    std::fs::write(&main, source.replace("Hello from the development loop", "Hello, recompiled")).expect("write");
    w.wait("the Go edit is served", Duration::from_mins(3), || page().contains("Hello, recompiled"));
    assert!(w.log().contains("run      build: run go build"), "{}", w.log());

    // A broken build.kdl: the diagnostic, and the old server keeps serving.
    let build = dir.join("build.kdl");
    let good = std::fs::read_to_string(&build).expect("build.kdl");
    std::fs::write(&build, good.replace("copy \"templates\" to=\"/templates\"", "copy \"templates\" to="))
        .expect("write");
    w.wait("the diagnostic", Duration::from_mins(1), || w.log().contains("build.kdl has errors"));
    assert!(w.log().contains("build.kdl:"), "no diagnostic pointing into build.kdl:\n{}", w.log());
    assert!(page().contains("Hello, recompiled"), "the old server stopped serving");

    // Fixed: it builds again, and the next template edit is served.
    std::fs::write(&build, &good).expect("write");
    let builds = w.log().matches("watch: built in").count();
    w.wait("the fixed build", Duration::from_mins(1), || w.log().matches("watch: built in").count() > builds);
    std::fs::write(&template, text.replace("<h1>", "<h1 class=\"recovered\">")).expect("write");
    w.wait("the edit after the fix is served", Duration::from_mins(1), || page().contains("class=\"recovered\""));
}
