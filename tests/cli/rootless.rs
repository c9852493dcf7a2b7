//! bake rootless (book/src/rootless.md): `bake doctor`, and the same image
//! built by root and by a user with subordinate ids.
//!
//! scripts/test-rootless.sh runs the whole CLI suite again as that user
//! (`bake-tester`, or BAKE_TEST_USER), so every other test is a rootless
//! test there. The tests named `as_root_*` compare root with that user, or
//! run bake as a user without subordinate ids: they need root, fail without
//! it, and the user's run leaves them out by name.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::examples::{Example, copy_tree};
use crate::harness::{Run, bake, bake_bin, finish, root};
use crate::images::{busybox_fixture, run};
use crate::registry::TestRegistry;

/// The user scripts/test-rootless.sh makes.
fn test_user() -> String {
    std::env::var("BAKE_TEST_USER").unwrap_or_else(|_| "bake-tester".to_owned())
}

/// `bake ARGS` in `dir` as `user` (a clean environment: the user's own
/// XDG folders, no root's), with `home` as BAKE_HOME.
fn bake_as(user: &str, dir: &Path, home: &Path, args: &[&str]) -> Run {
    assert!(nix::unistd::geteuid().is_root(), "this test switches to the user {user}: run it as root");
    let entry = nix::unistd::User::from_name(user).expect("passwd").expect("user");
    let (uid, gid) = (entry.uid.to_string(), entry.gid.to_string());
    finish(
        Command::new("setpriv")
            .args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--"])
            .arg("env")
            .arg("-i")
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg(format!("HOME={}", home.display()))
            .arg(format!("BAKE_HOME={}", home.display()))
            .args(["NO_COLOR=1", "COLUMNS=80"])
            .arg(bake_bin())
            .args(args)
            .current_dir(dir),
    )
}

/// A folder that `user` owns (its parents, temporary folders, opened to
/// everyone for traversal).
fn owned_by(user: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let entry = nix::unistd::User::from_name(user)
        .expect("passwd")
        .unwrap_or_else(|| panic!("no user {user}: scripts/test-rootless.sh setup makes it (with subordinate ids)"));
    nix::unistd::chown(dir.path(), Some(entry.uid), Some(entry.gid)).expect("chown");
    dir
}

fn digest_of(stderr: &str, image: &str) -> String {
    let line =
        stderr.lines().find(|l| l.starts_with(&format!("{image} sha256:"))).unwrap_or_else(|| panic!("{stderr}"));
    line.split_whitespace().nth(1).expect("digest").to_owned()
}

/// A base with device nodes (root pushes it), and steps on it that change
/// owners, delete (whiteouts) and replace folders (opaque), make links, a
/// FIFO and setuid files.
const CHANGES: &str = r#"
image "devices" from="REGISTRY/library/busybox:latest" {
    run "mkdir /devs && mknod /devs/null c 1 3 && mknod /devs/disk b 8 0"
    tag "REGISTRY/bake-test/devices:1"
}

image "mixed" from="REGISTRY/bake-test/devices:1" {
    run "mkdir -p /srv/a /srv/b && echo a > /srv/a/f && chown -R 1234:55 /srv/a && chown 65534:65534 /srv/b"
    run "rm -rf /etc/init.d /etc/group /srv/a && mkdir /srv/a && echo n > /srv/a/n"
    run "echo f > /srv/b/f && ln -s /srv/b/f /srv/link && ln /srv/b/f /srv/hard && mkfifo /srv/fifo && cp /bin/busybox /srv/su && chmod 4755 /srv/su"
    run "chown 2000:3000 /srv/su && chmod 6711 /srv/su && ls -ln /srv"
    cmd "cat" "/proc/self/uid_map"
    tag "bake-test/rootless:mixed"
}
"#;

#[test]
fn as_root_a_rootless_build_gives_the_digest_of_a_root_build() {
    let user = test_user();
    let registry = TestRegistry::start();
    let addr = registry.addr.clone();
    // Root publishes the base image; both builds pull it.
    let publisher = tempfile::tempdir().expect("tempdir");
    let fixture = busybox_fixture();
    let publish = bake(
        fixture.parent().expect("folder"),
        publisher.path(),
        &["-f", "build.kdl", "build", "--push", "--set", &format!("REGISTRY={addr}")],
    );
    assert_eq!(publish.code, 0, "{}", publish.render());

    let project = owned_by(&user);
    std::fs::write(project.path().join("build.kdl"), CHANGES.replace("REGISTRY", &addr)).expect("write");
    std::fs::set_permissions(project.path().join("build.kdl"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // The base has device nodes, which root makes.
    let devices = bake(project.path(), publisher.path(), &["build", "--push", "devices"]);
    assert_eq!(devices.code, 0, "{}", devices.render());
    let root_home = tempfile::tempdir().expect("tempdir");
    let as_root = bake(project.path(), root_home.path(), &["build", "mixed"]);
    assert_eq!(as_root.code, 0, "{}", as_root.render());
    assert!(!as_root.stderr.contains("warning"), "{}", as_root.stderr);

    let user_home = owned_by(&user);
    let rootless = bake_as(&user, project.path(), user_home.path(), &["build", "mixed"]);
    assert_eq!(rootless.code, 0, "{}", rootless.render());
    // The one warning: the base layer's devices could not be made.
    let warnings: Vec<&str> = rootless.stderr.lines().filter(|l| l.starts_with("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", rootless.stderr);
    assert!(warnings[0].contains(": 2 device nodes not made (making devices needs root of the host)"), "{warnings:?}");
    // What the step saw: the container's ids, not the host's.
    assert!(rootless.stderr.contains("2000     3000"), "{}", rootless.stderr);
    assert_eq!(digest_of(&rootless.stderr, "mixed"), digest_of(&as_root.stderr, "mixed"));

    // And it runs rootless: the container's root is the user, the rest of
    // its ids the user's subordinate range.
    let uid = nix::unistd::User::from_name(&user).expect("passwd").expect("user").uid.as_raw();
    let ran = bake_as(&user, project.path(), user_home.path(), &["run", "bake-test/rootless:mixed"]);
    assert_eq!(ran.code, 0, "{}", ran.render());
    let first: Vec<&str> = ran.stdout.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(first, ["0", &uid.to_string(), "1"], "{}", ran.stdout);
    assert_eq!(ran.stdout.lines().count(), 2, "{}", ran.stdout);
}

/// Every image of bake's summary (`NAME sha256:HEX SIZE in ...` lines on
/// stderr), by name.
fn digests(stderr: &str) -> BTreeMap<String, String> {
    stderr
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (name, digest) = (words.next()?, words.next()?);
            digest.starts_with("sha256:").then(|| (name.to_owned(), digest.to_owned()))
        })
        .collect()
}

/// The examples with `run` steps (a C compiler, Go), each built as root and
/// as the test user, each in a fresh store of its own with the same mirror of
/// docker.io: every image has one digest. The images are those examples.rs
/// builds, and hello-c's `compiler` stage, so that the layer of a `run` step
/// is compared, not only files copied out of one.
///
/// The Go examples' builder stages are left out: Go writes the time into its
/// build cache (each entry of `/root/.cache/go-build` records when it was
/// made), so two builds of such a stage as root, in two stores, give two
/// digests already (hello-go's `builder` was seen as `sha256:9403…` and
/// `sha256:4482…`); the binaries copied out of them are the same each time.
#[test]
fn as_root_the_examples_build_to_the_same_digests_rootless() {
    let user = test_user();
    let services: Vec<String> = std::fs::read_dir(root().join("examples/monorepo/services"))
        .expect("services")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(services.len() >= 10, "{services:?}");
    let examples: [(&str, &[&str], Vec<String>); 4] = [
        ("hello-c", &["debian", "gcc"], vec!["compiler".into(), "hello".into()]),
        ("hello-go", &["busybox", "golang"], vec!["hello-busybox".into(), "hello-scratch".into()]),
        ("whoami", &["golang"], vec!["whoami".into()]),
        ("monorepo", &["golang"], services),
    ];
    for (name, bases, images) in examples {
        let ex = Example::new(name, bases);
        let mut args = vec!["build"];
        args.extend(images.iter().map(String::as_str));
        let as_root = digests(&ex.bake_ok(&args).stderr);
        let mut wanted: Vec<&String> = images.iter().collect();
        wanted.sort();
        assert_eq!(as_root.keys().collect::<Vec<_>>(), wanted, "{name}: the images built as root");

        // The user's copy of the example and its own store, with the same
        // mirror in the config file of its home (bake_as sets HOME there).
        let project = owned_by(&user);
        copy_tree(&root().join("examples").join(name), project.path());
        let home = owned_by(&user);
        let config = home.path().join(".config/bake");
        std::fs::create_dir_all(&config).expect("mkdir");
        std::fs::copy(ex.home.path().join("config.kdl"), config.join("config.kdl")).expect("config");
        for dir in [project.path(), home.path()] {
            run(Command::new("chown").args(["-R", &format!("{user}:"), &dir.display().to_string()]));
        }
        let rootless = bake_as(&user, project.path(), home.path(), &args);
        assert_eq!(rootless.code, 0, "{name} as {user}:\n{}", rootless.render());
        eprintln!("{name}: {as_root:#?}");
        assert_eq!(digests(&rootless.stderr), as_root, "{name}: the digests as {user} and as root");
    }
}

/// The parts `bake doctor` checks, in order.
const PARTS: [&str; 8] = [
    "kernel",
    "user namespaces",
    "subordinate ids",
    "newuidmap",
    "overlayfs",
    "slirp4netns",
    "binfmt (arm64)",
    "docker socket",
];

/// Status and name of each line of `bake doctor` (details are the
/// machine's); the optional parts' status depends on the machine too
/// (binfmt handlers, Docker).
fn doctor_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let (status, rest) = l.split_once(' ').unwrap_or((l, ""));
            match PARTS.iter().find(|p| rest.trim_start().starts_with(*p)) {
                Some(part) if part.starts_with("binfmt") || part.starts_with("docker") => format!("[optional] {part}"),
                Some(part) => format!("{status} {part}"),
                None => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn doctor_finds_every_needed_part() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = bake(home.path(), home.path(), &["doctor"]);
    assert_eq!(out.code, 0, "{}", out.render());
    let lines = doctor_lines(&out.stdout);
    if nix::unistd::geteuid().is_root() {
        insta::assert_snapshot!(lines, @r"
        bake runs as root here
        ok kernel
        - user namespaces
        - subordinate ids
        - newuidmap
        ok overlayfs
        ok slirp4netns
        [optional] binfmt (arm64)
        [optional] docker socket
        ready: every part `run` steps need is present (lower-case `missing`: optional)
        ");
    } else {
        insta::assert_snapshot!(lines, @r"
        bake runs rootless here: in a user namespace of its own, as root there
        ok kernel
        ok user namespaces
        ok subordinate ids
        ok newuidmap
        ok overlayfs
        ok slirp4netns
        [optional] binfmt (arm64)
        [optional] docker socket
        ready: every part `run` steps need is present (lower-case `missing`: optional)
        ");
    }
}

#[test]
fn as_root_doctor_names_the_fix_for_a_user_without_subordinate_ids() {
    // `nobody` has no range in /etc/subuid.
    let home = owned_by("nobody");
    let out = bake_as("nobody", home.path(), home.path(), &["doctor"]);
    assert_eq!(out.code, 3, "{}", out.render());
    assert!(out.stdout.starts_with("bake runs rootless here"), "{}", out.stdout);
    assert!(out.stdout.contains("MISSING  subordinate ids  0 uids and 0 gids for nobody"), "{}", out.stdout);
    assert!(out.stdout.contains("fix: as root: usermod --add-subuids 100000-165535"), "{}", out.stdout);
    assert!(out.stdout.contains("not ready: `run` steps need subordinate ids\n"), "{}", out.stdout);
}
