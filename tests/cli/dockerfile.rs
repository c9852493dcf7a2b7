//! Dockerfiles built twice, by bake and by Docker's BuildKit, and the two
//! images compared.
//!
//! Each case is a folder of `tests/dockerfiles/`: a `Dockerfile` whose first
//! line says where it comes from, and its build context. The base images it
//! names (`gcc:12`, `busybox:1.35`, ...) are the offline fixtures:
//! `scripts/fixtures.sh publish` pushes them to a real registry that bake
//! uses as docker.io's mirror, and the same images are pulled from it into
//! the Docker engine under their Docker Hub names, where BuildKit finds
//! them (it never reaches Docker Hub). BuildKit is Debian's docker.io 20.10
//! (`DOCKER_BUILDKIT=1 docker build`); the engine has no bridge, so both
//! builds run their steps with `--network host` on Docker's side.
//!
//! The comparison ([`Snapshot`], [`differences`]) looks at what a user of
//! the image sees: every file of the merged filesystem (`docker create` +
//! `docker export`, so both images pass through the same engine) with its
//! path, type, mode, owner, size, content digest and link target, and the
//! config fields [`CONFIG_FIELDS`]. Left out on purpose, and said so in the
//! book: timestamps (bake's are reproducible, `SOURCE_DATE_EPOCH`), history,
//! and `ArgsEscaped` (a Windows-only flag BuildKit sets for shell forms).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::docker;
use crate::harness::{Run, root};
use crate::images::run;
use crate::registry::TestRegistry;

/// The config fields compared.
pub(crate) const CONFIG_FIELDS: [&str; 10] = [
    "Env",
    "Entrypoint",
    "Cmd",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
];

/// One file of an image's merged filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    /// `f` file, `d` folder, `l` symlink, `h` hard link, `c`/`b` devices, `p` fifo.
    pub(crate) kind: char,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    /// sha256 of a regular file's content.
    pub(crate) digest: Option<String>,
    /// A link's target.
    pub(crate) link: Option<String>,
}

/// What a user of an image sees: its files and its config.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) files: BTreeMap<String, FileEntry>,
    /// [`CONFIG_FIELDS`], each as Docker reports it (`null` when unset).
    pub(crate) config: BTreeMap<&'static str, serde_json::Value>,
}

/// Reads an image of the Docker engine.
///
/// The engine, shared with other test processes, has been seen to export a
/// container made a moment before as an empty archive (no entry at all,
/// where every container has at least `/.dockerenv` and `/etc`): such a
/// reading is taken again, up to three times.
pub(crate) fn snapshot(image: &str) -> Snapshot {
    for attempt in 1..=3 {
        let snap = read_image(image);
        if !snap.files.is_empty() {
            return snap;
        }
        eprintln!("docker export of {image} was empty (attempt {attempt}); reading it again");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    panic!("docker export of {image} stayed empty");
}

fn read_image(image: &str) -> Snapshot {
    let id = docker::ok(&["create", image, "x"]).trim().to_owned();
    let out = docker::output(&["export", &id]);
    let _ = docker::output(&["rm", "-f", &id]);
    assert!(out.status.success(), "docker export {image}: {}", String::from_utf8_lossy(&out.stderr));
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    for entry in archive.entries().expect("export tar") {
        let mut entry = entry.expect("tar entry");
        let header = entry.header().clone();
        let path = entry.path().expect("path").to_string_lossy().trim_end_matches('/').to_owned();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("{path}: unexpected tar entry {other:?}"),
        };
        let digest = (kind == 'f').then(|| {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("file content");
            bake_engine::oci::digest_of(&bytes).to_string()
        });
        let link = entry.link_name().expect("link name").map(|l| l.to_string_lossy().into_owned());
        files.insert(
            path,
            FileEntry {
                kind,
                mode: header.mode().expect("mode") & 0o7777,
                uid: header.uid().expect("uid"),
                gid: header.gid().expect("gid"),
                size: header.size().expect("size"),
                digest,
                link,
            },
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&docker::ok(&["image", "inspect", "-f", "{{json .Config}}", image])).expect("config json");
    let config = CONFIG_FIELDS.iter().map(|f| (*f, config.get(*f).cloned().unwrap_or_default())).collect();
    Snapshot { files, config }
}

/// Every way `ours` differs from `theirs`, one line each (empty: the same).
pub(crate) fn differences(ours: &Snapshot, theirs: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (path, theirs_entry) in &theirs.files {
        match ours.files.get(path) {
            None => out.push(format!("{path}: only in BuildKit's image: {theirs_entry:?}")),
            Some(o) if o != theirs_entry => out.push(format!("{path}: bake {o:?}, BuildKit {theirs_entry:?}")),
            Some(_) => {}
        }
    }
    for (path, o) in &ours.files {
        if !theirs.files.contains_key(path) {
            out.push(format!("{path}: only in bake's image: {o:?}"));
        }
    }
    for field in CONFIG_FIELDS {
        let (o, t) = (&ours.config[field], &theirs.config[field]);
        if o != t {
            out.push(format!("config {field}: bake {o}, BuildKit {t}"));
        }
    }
    out
}

/// [`differences`], once `stubs` are left out of BuildKit's image: empty
/// folders BuildKit 0.8 leaves at `RUN --mount` targets that did not exist
/// (later versions remove them; bake never makes them).
pub(crate) fn differences_but_stubs(ours: &Snapshot, mut theirs: Snapshot, stubs: &[&str]) -> Vec<String> {
    for stub in stubs {
        let entry = theirs.files.get(*stub);
        if entry.is_some_and(|e| e.kind == 'd' && !ours.files.contains_key(*stub)) {
            theirs.files.remove(*stub);
        }
    }
    differences(ours, &theirs)
}

/// The differences between two images of the engine, read once more when
/// there are some: a Docker engine shared with other test processes has
/// been seen to export a freshly loaded image's filesystem empty while
/// another process loaded images with the same base layers (the race
/// `docker.rs` describes, across processes its lock cannot reach). The
/// images are the same both times, so the second reading checks no less.
pub(crate) fn compare(ours: &str, theirs: &str, stubs: &[&str]) -> Vec<String> {
    let diff = differences_but_stubs(&snapshot(ours), snapshot(theirs), stubs);
    if diff.is_empty() {
        return diff;
    }
    eprintln!("{} differences between {ours} and {theirs}; reading both images again", diff.len());
    std::thread::sleep(std::time::Duration::from_secs(1));
    differences_but_stubs(&snapshot(ours), snapshot(theirs), stubs)
}

/// A case of `tests/dockerfiles/`, copied to a temporary folder, with a
/// registry holding its base images for bake and the same images in Docker.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) dir: tempfile::TempDir,
    home: tempfile::TempDir,
    _registry: TestRegistry,
}

impl Case {
    /// `fixtures`: what `scripts/fixtures.sh publish` makes (busybox, debian,
    /// gcc, golang); `bases`: the references the Dockerfile names, pulled
    /// into Docker under those names.
    pub(crate) fn new(name: &str, fixtures: &[&str], bases: &[&str]) -> Self {
        let registry = TestRegistry::start();
        run(Command::new(root().join("scripts/fixtures.sh"))
            .arg("publish")
            .arg(&registry.addr)
            .args(fixtures)
            .env("BAKE", env!("CARGO_BIN_EXE_bake"))
            .env_remove("BAKE_CONFIG"));
        docker::start();
        for base in bases {
            let mirrored = format!("{}/library/{base}", registry.addr);
            docker::ok(&["pull", "-q", &mirrored]);
            docker::ok(&["tag", &mirrored, base]);
        }
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            home.path().join("config.kdl"),
            format!("registry \"docker.io\" {{\n    mirror \"{}\"\n}}\n", registry.addr),
        )
        .expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(&root().join("tests/dockerfiles").join(name), dir.path());
        Self { name: name.to_owned(), dir, home, _registry: registry }
    }

    /// `bake ARGS` in the case's folder.
    pub(crate) fn bake(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_bake"))
            .current_dir(self.dir.path())
            .env("BAKE_HOME", self.home.path())
            .env("BAKE_CONFIG", self.home.path().join("config.kdl"))
            .env("NO_COLOR", "1")
            .env("COLUMNS", "80")
            .env_remove("CLICOLOR_FORCE")
            .args(args)
            .output()
            .expect("run bake");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Builds the Dockerfile with bake (`args`: `--build-arg`, `--secret`,
    /// `--target`...) and loads it into Docker as [`Case::tag`] `bake`.
    pub(crate) fn build_with_bake(&self, dockerfile: &str, args: &[&str]) -> String {
        let tag = self.tag("bake");
        let archive = self.dir.path().join("bake-image.tar");
        let dest = format!("type=docker,dest={}", archive.display());
        let mut all = vec!["-f", dockerfile, "build", "-t", &tag, "-o", &dest];
        all.extend_from_slice(args);
        let r = self.bake(&all);
        assert_eq!(r.code, 0, "bake {}:\n{}", all.join(" "), r.render());
        docker::load(&archive);
        std::fs::remove_file(&archive).expect("remove the archive");
        tag
    }

    /// Builds the Dockerfile with Docker's BuildKit as [`Case::tag`] `buildkit`.
    pub(crate) fn build_with_buildkit(&self, dockerfile: &str, args: &[&str]) -> String {
        let tag = self.tag("buildkit");
        let context = self.dir.path().display().to_string();
        let file = self.dir.path().join(dockerfile).display().to_string();
        let mut all = vec!["-q", "--network", "host", "-f", &file, "-t", &tag];
        all.extend_from_slice(args);
        all.push(&context);
        docker::buildkit(&all);
        tag
    }

    /// The image name of one build of this case: `bake-df/NAME-PID:WHO`.
    /// The process id keeps two test runs sharing the engine (two
    /// checkouts) from removing each other's images.
    pub(crate) fn tag(&self, who: &str) -> String {
        format!("bake-df/{}-{}:{who}", self.name, std::process::id())
    }

    /// Builds `Dockerfile` with both and asserts the images agree.
    pub(crate) fn assert_same(&self, args: &[&str]) -> (String, String) {
        self.assert_same_file("Dockerfile", args)
    }

    /// Builds a Dockerfile of the case with both and asserts the images agree.
    pub(crate) fn assert_same_file(&self, dockerfile: &str, args: &[&str]) -> (String, String) {
        self.assert_same_but_stubs(dockerfile, args, &[])
    }

    /// [`Case::assert_same_file`], allowing `stubs`: empty folders that
    /// BuildKit 0.8 leaves where a `RUN --mount` target did not exist (later
    /// BuildKit versions remove them, as bake never makes them).
    pub(crate) fn assert_same_but_stubs(&self, dockerfile: &str, args: &[&str], stubs: &[&str]) -> (String, String) {
        let ours = self.build_with_bake(dockerfile, args);
        let theirs = self.build_with_buildkit(dockerfile, args);
        let diff = compare(&ours, &theirs, stubs);
        assert!(diff.is_empty(), "{} differs from BuildKit's image:\n{}", self.name, diff.join("\n"));
        (ours, theirs)
    }

    /// A secret's file, outside the build context (in the case's own
    /// BAKE_HOME: never a shared folder such as /tmp, where another user's
    /// run of the same test left its own).
    pub(crate) fn secret_file(&self, text: &str) -> PathBuf {
        let path = self.home.path().join("token");
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A file in the case's folder (created folders included).
    pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for tag in ["bake", "buildkit"] {
            let _ = docker::output(&["rmi", "-f", &self.tag(tag)]);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
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

#[test]
fn c_multistage_gives_the_image_buildkit_gives() {
    let case = Case::new("c-multistage", &["busybox", "gcc"], &["busybox:1.35", "gcc:12"]);
    let token = case.secret_file("s3cr3t-value");
    let secret = format!("id=token,src={}", token.display());
    let (ours, _) = case.assert_same(&["--secret", &secret, "--build-arg", "VERSION=1.2.3", "--build-arg", "OPT=-O1"]);
    // The build args reached the steps and the image as Docker makes them.
    let snap = snapshot(&ours);
    assert_eq!(snap.config["Labels"]["org.opencontainers.image.version"], "1.2.3");
    let shown = docker::run(&["--entrypoint", "cat", &ours, "/usr/share/hello/opt.txt", "/work/greeting.txt"]);
    assert_eq!(shown, "built with -O1 for hello\nhello from 1.2.3\n");
    assert_eq!(docker::run(&[&ours]), "hello from a Dockerfile\n");
    // .dockerignore: the context copy left notes.tmp out.
    assert!(
        snap.files.contains_key("ctx/hello.c") && !snap.files.contains_key("ctx/notes.tmp"),
        "{:?}",
        snap.files.keys().filter(|k| k.starts_with("ctx")).collect::<Vec<_>>()
    );
    // Built again: every step is cached.
    let again = case.bake(&[
        "-f",
        "Dockerfile",
        "build",
        "--secret",
        &secret,
        "--build-arg",
        "VERSION=1.2.3",
        "--build-arg",
        "OPT=-O1",
    ]);
    assert!(again.stderr.contains(" 0 steps run"), "{}", again.render());
    // An arg of the runtime stage leaves the build stage's steps cached.
    let changed = case.bake(&[
        "-f",
        "Dockerfile",
        "build",
        "--secret",
        &secret,
        "--build-arg",
        "VERSION=2",
        "--build-arg",
        "OPT=-O1",
    ]);
    assert_eq!(changed.code, 0, "{}", changed.render());
    assert!(!changed.stderr.contains("run      build:"), "{}", changed.render());
    assert!(changed.stderr.contains("run      runtime: run echo"), "{}", changed.render());
}

#[test]
fn config_instructions_and_arg_scopes_match_buildkit() {
    let case = Case::new("busybox-config", &["busybox"], &["busybox:1.35"]);
    let (ours, _) = case.assert_same_file("app.Dockerfile", &["--build-arg", "SUFFIX=two"]);
    let files = ["args.txt", "env.txt", "shadowed.txt", "shell.txt"].map(|f| format!("/opt/app/sub/{f}"));
    let mut args = vec!["--entrypoint", "cat", ours.as_str()];
    args.extend(files.iter().map(String::as_str));
    let shown = docker::run(&args);
    assert_eq!(shown, "two local-two a b\nLOCAL=local-two\nSUFFIX=two\nfrom-env\nshell /bin/sh\n");
    // app.Dockerfile.dockerignore, not .dockerignore, decided what the context holds.
    let snap = snapshot(&ours);
    assert!(snap.files.contains_key("ctx/kept.md") && !snap.files.contains_key("ctx/dropped.txt"));
    // ADD unpacked the gzip tar, with the archive's owners and modes.
    let secret = &snap.files["opt/pkg/secret.txt"];
    assert_eq!((secret.uid, secret.gid, secret.mode), (1234, 5678, 0o600), "{secret:?}");
    assert_eq!(snap.files["opt/pkg/link"].link.as_deref(), Some("readme"));
    // WORKDIR after USER made its folder for that user, as BuildKit does.
    assert_eq!(snap.files["srv/data"].uid, 1000, "{:?}", snap.files["srv/data"]);
}

#[test]
fn a_dockerfile_node_in_build_kdl_gives_what_one_whole_dockerfile_gives() {
    let case = Case::new("kdl-mix", &["busybox"], &["busybox:1.35"]);
    // build.kdl builds on svc/Dockerfile's stages; BuildKit builds the same
    // steps written as one Dockerfile.
    let archive = case.dir.path().join("app.tar");
    let dest = format!("type=docker,dest={}", archive.display());
    let ours = case.tag("bake");
    let set_tag = format!("TAG={ours}");
    let built = case.bake(&["build", "app", "--set", "FLAVOUR=spicy", "--set", &set_tag, "-o", &dest]);
    assert_eq!(built.code, 0, "{}", built.render());
    docker::load(&archive);
    let theirs = case.build_with_buildkit("equivalent.Dockerfile", &["--build-arg", "FLAVOUR=spicy"]);
    let diff = compare(&ours, &theirs, &["mnt", "t"]);
    assert!(diff.is_empty(), "the mixed build differs from BuildKit's image:\n{}", diff.join("\n"));
    assert_eq!(docker::run(&[&ours]), "hello from svc\nflavour: spicy\nsecond\n");
}

#[test]
fn a_secret_reaches_a_step_as_an_environment_variable_and_nowhere_else() {
    let case = Case::new("secret-env", &["busybox"], &["busybox:1.35"]);
    let token = case.secret_file("s3cr3t-value");
    let secret = format!("id=token,src={}", token.display());
    let ours = case.build_with_bake("Dockerfile", &["--secret", &secret]);
    assert_eq!(docker::run(&["--entrypoint", "cat", &ours, "/checked.txt"]), "length 12\n");
    let snap = snapshot(&ours);
    let secret_digest = bake_engine::oci::digest_of(b"s3cr3t-value").to_string();
    assert!(!snap.files.values().any(|f| f.digest.as_deref() == Some(secret_digest.as_str())));
    assert!(!snap.files.contains_key("run/secrets/token") && !snap.files.contains_key("run/secrets"));
    // Without it, the step runs with no TOKEN (a secret mount is optional
    // unless `required`, as in BuildKit), and its own check fails.
    let missing = case.bake(&["-f", "Dockerfile", "build", "--no-cache"]);
    assert_eq!(missing.code, 1, "{}", missing.render());
    assert!(missing.stderr.contains("failed with exit code 1"), "{}", missing.render());
}

#[test]
fn an_optional_copy_source_may_match_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("home");
    std::fs::write(dir.path().join("a.txt"), "a\n").expect("write");
    let kdl = |optional: &str| {
        format!(
            "stage \"s\" from=\"scratch\" {{\n    copy \"*.lock\" \"a.txt\" to=\"/x/\" {optional}\n}}\nartifact \"out\" from=\"s\" path=\"/x\" dest=\"out\"\n"
        )
    };
    std::fs::write(dir.path().join("build.kdl"), kdl("optional=#true")).expect("write");
    let r = crate::harness::bake(dir.path(), home.path(), &["build", "out"]);
    assert_eq!(r.code, 0, "{}", r.render());
    let got: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .expect("artifact")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(got, ["a.txt"]);
    // Without it, a pattern that matches nothing is an error at its line.
    std::fs::write(dir.path().join("build.kdl"), kdl("")).expect("write");
    let r = crate::harness::bake(dir.path(), home.path(), &["build", "out"]);
    assert_eq!(r.code, 1, "{}", r.render());
    assert!(r.stderr.contains("*.lock"), "{}", r.render());
}

#[test]
fn run_mounts_of_the_context_and_tmpfs_match_buildkit() {
    let case = Case::new("run-mounts", &["busybox"], &["busybox:1.35"]);
    let stubs = ["ctx", "mnt", "mnt/src", "mnt/tools", "scratch"];
    let (ours, _) = case.assert_same_but_stubs("Dockerfile", &[], &stubs);
    // A stage's files keep their owners and links; an image's file is itself.
    let tools = docker::run(&["--entrypoint", "cat", &ours, "/work/tools.txt"]);
    assert_eq!(tools, "lrwxrwxrwx 0 0 link t.txt\ndrwxr-xr-x 0 0 sub \n-rw-r--r-- 5 6 t.txt \ntool\nsame-busybox\n");
    let shown = docker::run(&["--entrypoint", "cat", &ours, "/work/listing.txt", "/work/ctx.txt"]);
    assert_eq!(
        shown,
        "/mnt/src:\na.txt\nsub\n\n/mnt/src/sub:\nb.txt\na\nt\nread-only\n.dockerignore\nDockerfile\nsrc\nwritten-by-step\n"
    );
    // A file the bound folder gains changes the step's key.
    case.write("src/sub/c.txt", "c\n");
    let again = case.bake(&["-f", "Dockerfile", "build"]);
    assert_eq!(again.code, 0, "{}", again.render());
    assert!(again.stderr.contains("run      1: run ls -AR"), "{}", again.render());
}
