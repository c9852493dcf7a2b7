//! Images end to end: bake builds, real tools check. A real Docker engine
//! loads and runs what bake wrote, skopeo and umoci read its OCI output, and
//! a real registry (Debian's docker-registry) takes its pushes.

use std::path::Path;
use std::process::Command;

use crate::docker;
use crate::exit_codes::ENVIRONMENT;
use crate::harness::{bake, bake_cmd, root};
use crate::registry::TestRegistry;

/// A context with busybox (a static binary) and a build.kdl.
fn project(build: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).expect("busybox-static is installed");
    std::fs::create_dir_all(dir.path().join("www/css")).expect("mkdir");
    std::fs::write(dir.path().join("www/index.html"), "<h1>hello</h1>\n").expect("write");
    std::fs::write(dir.path().join("www/css/site.css"), "h1 { color: red }\n").expect("write");
    std::fs::write(dir.path().join("build.kdl"), build).expect("write");
    dir
}

const HELLO: &str = r#"
image "hello" from="scratch" {
    copy "busybox" to="/bin/busybox" chmod=755
    copy "www" to="/srv/www/"
    workdir "/srv/www"
    env "GREETING" "hello from bake"
    entrypoint "/bin/busybox"
    cmd "sh" "-c" "echo $GREETING; cat index.html; ls -ln /srv/www"
    tag "bake-test/hello:e2e"
}
"#;

/// Runs a command, asserting it succeeds; returns stdout.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn digest_of(stderr: &str, image: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{image} sha256:")).map(|rest| rest.split(' ').next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("no digest for {image} in:\n{stderr}"))
}

#[test]
fn scratch_image_runs_under_docker_and_is_valid_oci() {
    let home = tempfile::tempdir().expect("tempdir");
    let p = project(HELLO);
    let out = p.path();
    let run_bake = bake(
        out,
        home.path(),
        &[
            "build",
            "-o",
            "type=docker,dest=docker.tar",
            "-o",
            "type=oci,dest=oci.tar",
            "-o",
            "type=oci-dir,dest=layout",
        ],
    );
    assert_eq!(run_bake.code, 0, "{}", run_bake.render());

    // Docker loads and runs it.
    docker::load(&out.join("docker.tar"));
    let said = docker::run(&["bake-test/hello:e2e"]);
    assert!(said.contains("hello from bake"), "{said}");
    assert!(said.contains("<h1>hello</h1>"), "{said}");
    // Copied files belong to root, whatever owned them on the host.
    assert!(said.contains(" 0        0 ") || said.contains(" 0 0 "), "{said}");

    // skopeo reads the OCI archive; umoci unpacks the layout.
    let inspect =
        run(Command::new("skopeo").arg("inspect").arg(format!("oci-archive:{}", out.join("oci.tar").display())));
    let doc: serde_json::Value = serde_json::from_str(&inspect).expect("skopeo json");
    assert_eq!(doc["Digest"].as_str(), Some(format!("sha256:{}", digest_of(&run_bake.stderr, "hello")).as_str()));
    assert_eq!(doc["Layers"].as_array().map(Vec::len), Some(2));
    let bundle = out.join("bundle");
    // As a user (scripts/test-rootless.sh), umoci cannot chown: --rootless.
    let rootless = (!nix::unistd::geteuid().is_root()).then_some("--rootless");
    run(Command::new("umoci")
        .args(["unpack"].into_iter().chain(rootless).chain(["--image"]))
        .arg(format!("{}:e2e", out.join("layout").display()))
        .arg(&bundle));
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/srv/www/css/site.css")).expect("css"),
        "h1 { color: red }\n"
    );
}

#[test]
fn same_inputs_give_the_same_digest_in_fresh_stores_whatever_the_mtimes() {
    let a = project(HELLO);
    let b = project(HELLO);
    // Different mtimes (and inodes, and paths) for b's files.
    for f in ["busybox", "www/index.html", "www/css/site.css", "www/css", "www"] {
        let file = std::fs::File::open(b.path().join(f)).expect("open");
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_hours(24 * 400)).expect("touch");
    }
    let (home_a, home_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let one = bake(a.path(), home_a.path(), &["build", "-o", "type=oci,dest=out.tar"]);
    let two = bake(b.path(), home_b.path(), &["build", "-o", "type=oci,dest=out.tar"]);
    assert_eq!(one.code, 0, "{}", one.render());
    assert_eq!(two.code, 0, "{}", two.render());
    assert_eq!(digest_of(&one.stderr, "hello"), digest_of(&two.stderr, "hello"));
    let bytes = |d: &Path| std::fs::read(d.join("out.tar")).expect("read");
    assert!(bytes(a.path()) == bytes(b.path()), "the OCI archives differ");

    // An unchanged rebuild runs nothing and gives the same image.
    let again = bake(a.path(), home_a.path(), &["build"]);
    assert_eq!(again.code, 0, "{}", again.render());
    assert!(again.stderr.contains("0 steps run"), "{}", again.stderr);
    assert_eq!(digest_of(&again.stderr, "hello"), digest_of(&one.stderr, "hello"));
}

#[test]
fn copies_from_stages_and_images_push_and_pull_back() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let home = tempfile::tempdir().expect("tempdir");
    let build = format!(
        r#"
stage "tools" from="scratch" {{
    copy "busybox" to="/bin/"
    copy "www" to="/www" exclude="**/*.css"
}}

image "base" from="scratch" {{
    copy "/bin/busybox" from="tools" to="/bin/busybox"
    tag "{addr}/bake/base:1"
}}

image "site" from="{addr}/bake/base:1" {{
    copy "/www" from="tools" to="/srv/"
    copy "/bin/busybox" from="{addr}/bake/base:1" to="/usr/bin/box"
    user "1000:1000"
    entrypoint "/bin/busybox" "ls" "-R" "/srv"
    tag "{addr}/bake/site:1" "{addr}/bake/site:latest"
}}
"#
    );
    let p = project(&build);
    // The base image is pushed first, then built upon from the registry.
    let base = bake(p.path(), home.path(), &["build", "--push", "base"]);
    assert_eq!(base.code, 0, "{}", base.render());
    let site = bake(p.path(), home.path(), &["build", "--push", "site"]);
    assert_eq!(site.code, 0, "{}", site.render());
    let digest = digest_of(&site.stderr, "site");

    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{addr}/bake/site:latest")));
    let doc: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(doc["Digest"].as_str(), Some(format!("sha256:{digest}").as_str()));
    assert_eq!(doc["Layers"].as_array().map(Vec::len), Some(3), "base layer + two copies");

    // Pull it back into a fresh store and run it.
    let fresh = tempfile::tempdir().expect("tempdir");
    let again = project(&format!("image \"again\" from=\"{addr}/bake/site:1\" {{\n    label \"x\" \"y\"\n}}\n"));
    let pulled = bake(again.path(), fresh.path(), &["build", "-o", "type=docker,dest=again.tar"]);
    assert_eq!(pulled.code, 0, "{}", pulled.render());
    docker::load(&again.path().join("again.tar"));
    let listing = docker::run(&["again:latest"]);
    assert!(listing.contains("index.html"), "{listing}");
    assert!(!listing.contains("site.css"), "excluded by the copy: {listing}");
}

#[test]
fn a_missing_path_in_a_stage_points_at_the_copy() {
    let home = tempfile::tempdir().expect("tempdir");
    let p = project(
        r#"
stage "a" from="scratch" {
    copy "www" to="/www"
}
image "b" from="scratch" {
    copy "/nope" from="a" to="/"
}
"#,
    );
    let run = bake(p.path(), home.path(), &["build"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(run.stderr.contains("`/nope` does not exist in stage `a`"), "{}", run.stderr);
    assert!(run.stderr.contains("build.kdl:6"), "{}", run.stderr);
}

/// The busybox fixture's build.kdl (its rootfs made offline by
/// scripts/fixtures.sh, which the test script runs first).
pub(crate) fn busybox_fixture() -> std::path::PathBuf {
    let cache =
        std::env::var_os("BAKE_FIXTURES").map_or_else(|| "/var/cache/bake-fixtures".into(), std::path::PathBuf::from);
    let file = cache.join("busybox/build.kdl");
    if !file.is_file() {
        run(Command::new(root().join("scripts/fixtures.sh")).args(["build", "busybox"]).env("BAKE_FIXTURES", &cache));
    }
    file
}

#[test]
fn short_names_pull_through_a_docker_io_mirror() {
    let registry = TestRegistry::start();
    let addr = registry.addr.clone();
    // bake makes the busybox base image itself and pushes it as the mirror's
    // library/busybox.
    let publisher = tempfile::tempdir().expect("tempdir");
    let fixture = busybox_fixture();
    let fixture_dir = fixture.parent().expect("folder");
    let publish = crate::harness::bake(
        fixture_dir,
        publisher.path(),
        &["-f", "build.kdl", "build", "--push", "--set", &format!("REGISTRY={addr}")],
    );
    assert_eq!(publish.code, 0, "{}", publish.render());

    // A fresh store, with a config that serves docker.io from the mirror.
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("config.kdl");
    std::fs::write(&config, format!("registry \"docker.io\" {{\n    mirror \"{addr}\"\n}}\n")).expect("write");
    let p = project(
        r#"
image "greeter" from="busybox" {
    copy "www" to="/www"
    cmd "sh" "-c" "echo greetings from $(cat /www/index.html)"
    tag "bake-test/greeter:e2e"
}
"#,
    );
    let out = bake_cmd(p.path(), home.path())
        .args(["build", "-o", "type=docker,dest=greeter.tar"])
        .env("BAKE_CONFIG", &config)
        .output()
        .expect("run bake");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pull     docker.io/library/busybox:latest"), "{stderr}");
    docker::load(&p.path().join("greeter.tar"));
    let said = docker::run(&["bake-test/greeter:e2e"]);
    assert!(said.contains("greetings from <h1>hello</h1>"), "{said}");
}

#[test]
fn images_cache_du_and_prune() {
    let home = tempfile::tempdir().expect("tempdir");
    let p = project(HELLO);
    let first = bake(p.path(), home.path(), &["build"]);
    assert_eq!(first.code, 0, "{}", first.render());
    let digest = digest_of(&first.stderr, "hello");

    let images = bake(p.path(), home.path(), &["images"]);
    assert_eq!(images.code, 0, "{}", images.render());
    assert!(images.stdout.starts_with("NAME"), "{}", images.stdout);
    for name in ["hello ", "docker.io/bake-test/hello:e2e "] {
        let line = images.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{}", images.stdout));
        assert!(line.contains(&digest[..12]), "{line}");
        assert!(line.contains("1970-01-01T00:00:00Z"), "{line}");
    }

    let du = bake(p.path(), home.path(), &["cache", "du"]);
    assert_eq!(du.code, 0, "{}", du.render());
    // Two steps and the stage, and the compressed form of each step's layer
    // (steps write them uncompressed; the image carries them compressed).
    assert!(du.stdout.contains("2 images") && du.stdout.contains("5 cache entries"), "{}", du.stdout);

    // Dropping the cache keeps the images; the next build runs every step
    // again and makes the same image.
    let prune = bake(p.path(), home.path(), &["cache", "prune", "--all"]);
    assert_eq!(prune.code, 0, "{}", prune.render());
    assert!(prune.stdout.contains("5 cache entries"), "{}", prune.stdout);
    let again = bake(p.path(), home.path(), &["build"]);
    assert_eq!(again.code, 0, "{}", again.render());
    assert!(again.stderr.contains("2 steps run, 0 cached"), "{}", again.stderr);
    assert_eq!(digest_of(&again.stderr, "hello"), digest);
}

/// A tar member with a raw name (the `tar` crate refuses to write `..`).
fn raw_member(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, content: &[u8]) {
    let mut block = [0u8; 512];
    block[..name.len()].copy_from_slice(name.as_bytes());
    block[100..107].copy_from_slice(b"0000644");
    block[108..115].copy_from_slice(b"0000000");
    block[116..123].copy_from_slice(b"0000000");
    block[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
    block[136..147].copy_from_slice(b"00000000000");
    block[156] = kind;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(content);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path)).split(' ').next().unwrap_or_default().to_owned()
}

#[test]
fn a_hostile_base_layer_is_refused_naming_layer_and_entry() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    // An OCI layout whose only layer climbs out of where it is unpacked.
    let layout = tempfile::tempdir().expect("tempdir");
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let mut tar = Vec::new();
    raw_member(&mut tar, "x", b'0', "", b"fine\n");
    raw_member(&mut tar, "../../bake-evil", b'0', "", b"escaped\n");
    tar.extend_from_slice(&[0; 1024]);
    let tar_path = layout.path().join("layer.tar");
    std::fs::write(&tar_path, &tar).expect("write");
    let diff_id = sha256(&tar_path);
    run(Command::new("gzip").args(["-n", "-k"]).arg(&tar_path));
    let gz = layout.path().join("layer.tar.gz");
    let layer = sha256(&gz);
    let layer_size = std::fs::metadata(&gz).expect("gz").len();
    std::fs::rename(&gz, blobs.join(&layer)).expect("move");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    std::fs::write(blobs.join("config"), &config).expect("write");
    let config_digest = sha256(&blobs.join("config"));
    std::fs::rename(blobs.join("config"), blobs.join(&config_digest)).expect("move");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer}","size":{layer_size}}}]}}"#,
        config.len()
    );
    std::fs::write(blobs.join("manifest"), &manifest).expect("write");
    let manifest_digest = sha256(&blobs.join("manifest"));
    std::fs::rename(blobs.join("manifest"), blobs.join(&manifest_digest)).expect("move");
    std::fs::write(layout.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    std::fs::write(
        layout.path().join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"evil"}}}}]}}"#,
            manifest.len()
        ),
    )
    .expect("write");
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:evil", layout.path().display()))
        .arg(format!("docker://{addr}/bake/evil:1")));

    let home = tempfile::tempdir().expect("tempdir");
    let p = project(&format!(
        "image \"victim\" from=\"scratch\" {{\n    copy \"/x\" from=\"{addr}/bake/evil:1\" to=\"/x\"\n}}\n"
    ));
    let build = bake(p.path(), home.path(), &["build"]);
    assert_eq!(build.code, ENVIRONMENT, "{}", build.render());
    assert!(build.stderr.contains(&layer[..12]), "the error names the layer:\n{}", build.stderr);
    assert!(build.stderr.contains("../../bake-evil"), "the error names the entry:\n{}", build.stderr);
    let escaped = Command::new("find").arg(home.path()).args(["-name", "bake-evil"]).output().expect("find");
    assert!(escaped.stdout.is_empty(), "written outside: {}", String::from_utf8_lossy(&escaped.stdout));
}
