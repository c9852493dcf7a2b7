//! Multi-platform images end to end: busybox published as an index of
//! linux/amd64 and linux/arm64 (the arm64 tree is Debian's arm64
//! busybox-static, made by scripts/fixtures.sh), a build for both
//! platforms, and real tools to check it: skopeo reads the pushed index,
//! qemu runs the arm64 step and image, Docker runs the amd64 one.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::docker;
use crate::harness::{Run, bake, bake_cmd, finish, root};
use crate::images::run;
use crate::registry::TestRegistry;

/// The fixture cache with the busybox and busybox-arm64 trees, and qemu's
/// aarch64 emulator registered with binfmt_misc (needs root, as the
/// fixtures do).
fn fixtures() -> PathBuf {
    let cache = std::env::var_os("BAKE_FIXTURES").map_or_else(|| "/var/cache/bake-fixtures".into(), PathBuf::from);
    let script = root().join("scripts/fixtures.sh");
    run(Command::new(&script).args(["build", "busybox", "busybox-arm64"]).env("BAKE_FIXTURES", &cache));
    run(Command::new(&script).arg("emulation"));
    cache
}

/// A registry serving `library/busybox` as a two-platform index, and a
/// config file that makes it docker.io's mirror.
struct Mirror {
    registry: TestRegistry,
    config: tempfile::NamedTempFile,
}

fn mirror() -> Mirror {
    mirror_of(&[])
}

/// [`mirror`], with more of `scripts/fixtures.sh publish`'s images
/// (`golang`).
fn mirror_of(more: &[&str]) -> Mirror {
    fixtures();
    let registry = TestRegistry::start();
    {
        // The fixture store is shared with the examples' tests.
        let _one = crate::examples::PUBLISH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        run(Command::new(root().join("scripts/fixtures.sh"))
            .arg("publish")
            .arg(&registry.addr)
            .arg("busybox-platforms")
            .args(more)
            .env("BAKE", env!("CARGO_BIN_EXE_bake"))
            .env_remove("BAKE_CONFIG"));
    }
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), format!("registry \"docker.io\" {{\n    mirror \"{}\"\n}}\n", registry.addr))
        .expect("write");
    Mirror { registry, config }
}

impl Mirror {
    fn bake(&self, dir: &Path, home: &Path, args: &[&str]) -> Run {
        finish(bake_cmd(dir, home).args(args).env("BAKE_CONFIG", self.config.path()))
    }
}

/// `tools` depends on no target platform (built once, natively); `cross`
/// is pinned to the build machine but uses TARGETARCH (natively, its first
/// step once, its second once per target); `base` is resolved for each target (its step emulated for
/// arm64); the image is assembled per platform from copies alone.
const BUILD: &str = r#"
arg "REGISTRY"

stage "tools" from="busybox" platform="${BUILDPLATFORM}" {
    run "echo shared > /shared"
}

stage "cross" from="busybox" platform="${BUILDPLATFORM}" {
    run "echo prepared > /prepared"
    run "echo built on $(uname -m) for ${TARGETOS}/${TARGETARCH} > /built-for"
}

stage "base" from="busybox" {
    run "uname -m > /arch"
}

image "app" from="scratch" {
    platforms "linux/amd64" "linux/arm64"
    copy "/bin/busybox" to="/busybox" from="base"
    copy "/arch" to="/arch" from="base"
    copy "/built-for" to="/built-for" from="cross"
    copy "/shared" to="/shared" from="tools"
    entrypoint "/busybox"
    cmd "cat" "/arch" "/built-for" "/shared"
    tag "${REGISTRY}/bake-test/multi:1"
}
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("build.kdl"), BUILD).expect("write");
    dir
}

fn events(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", run.render())))
        .collect()
}

fn started(events: &[Value]) -> Vec<String> {
    let mut nodes: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "started")
        .map(|e| e["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn two_platforms_cross_built_emulated_and_pushed_as_one_index() {
    let m = mirror();
    let p = project();
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", m.registry.addr);
    let build = m.bake(p.path(), home.path(), &["build", "--progress", "json", "--push", "--set", &reg]);
    assert_eq!(build.code, 0, "{}", build.render());
    let events = events(&build);
    // The stage without target-platform dependencies ran once; the others
    // once per platform.
    assert_eq!(
        started(&events)
            .iter()
            .filter(|n| n.starts_with("tools") || n.starts_with("cross") || n.starts_with("base"))
            .collect::<Vec<_>>(),
        [
            "base[linux/amd64]/0",
            "base[linux/arm64]/0",
            "cross/0",
            "cross[linux/amd64]/1",
            "cross[linux/arm64]/1",
            "tools/0"
        ],
        "{}",
        build.render()
    );
    let index = events.iter().find(|e| e["event"] == "index").unwrap_or_else(|| panic!("{}", build.render()));
    assert_eq!(index["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));

    // The registry has one index naming both platforms' manifests.
    let tag = format!("docker://{}/bake-test/multi:1", m.registry.addr);
    let raw: Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &tag])))
            .expect("index JSON");
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["platform"]["os"].as_str().unwrap_or(""),
                d["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let arm64 = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--override-arch", "arm64", &tag]));
    assert!(arm64.contains("\"Architecture\": \"arm64\""), "{arm64}");

    // The arm64 image runs under qemu: its step saw an aarch64 machine, its
    // busybox is an arm64 binary, and the cross-compiling stage ran natively
    // with the target's TARGETARCH.
    let said = m.bake(p.path(), home.path(), &["run", "--platform", "linux/arm64", "app"]);
    assert_eq!(said.code, 0, "{}", said.render());
    assert_eq!(said.stdout, "aarch64\nbuilt on x86_64 for linux/arm64\nshared\n", "{}", said.render());
    let uname = m.bake(p.path(), home.path(), &["run", "--platform", "linux/arm64", "app", "uname", "-m"]);
    assert_eq!(uname.stdout, "aarch64\n", "{}", uname.render());
    let native = m.bake(p.path(), home.path(), &["run", "app"]);
    assert_eq!(native.stdout, "x86_64\nbuilt on x86_64 for linux/amd64\nshared\n", "{}", native.render());

    // `bake images` lists the index's platforms.
    let images = bake(p.path(), home.path(), &["images"]);
    let line = images.stdout.lines().find(|l| l.starts_with("app ")).unwrap_or_else(|| panic!("{}", images.stdout));
    assert!(line.ends_with("[linux/amd64, linux/arm64]"), "{line}");

    // A stage built on its own for both targets is kept once per target
    // (both are linux/amd64 filesystems: no index).
    let cross = m.bake(p.path(), home.path(), &["build", "cross", "--set", &reg]);
    assert_eq!(cross.code, 0, "{}", cross.render());
    let images = bake(p.path(), home.path(), &["images"]);
    for name in ["cross [linux/amd64] ", "cross [linux/arm64] "] {
        assert!(images.stdout.lines().any(|l| l.starts_with(name)), "{}", images.stdout);
    }
    assert!(!images.stdout.lines().any(|l| l.starts_with("cross ") && !l.starts_with("cross [")), "{}", images.stdout);
    let arm = m.bake(p.path(), home.path(), &["run", "--platform", "linux/arm64", "cross", "cat", "/built-for"]);
    assert_eq!(arm.stdout, "built on x86_64 for linux/arm64\n", "{}", arm.render());

    // The amd64 image alone loads into Docker and runs there; both at once
    // cannot go into one `docker load` archive.
    let both = m.bake(p.path(), home.path(), &["build", "--set", &reg, "-o", "type=docker,dest=app.tar"]);
    assert_ne!(both.code, 0, "{}", both.render());
    assert!(both.stderr.contains("built for linux/amd64, linux/arm64"), "{}", both.render());
    assert!(both.stderr.contains("--platform linux/amd64"), "{}", both.render());
    let one = m.bake(
        p.path(),
        home.path(),
        &["build", "--set", &reg, "--platform", "linux/amd64", "-o", "type=docker,dest=app.tar"],
    );
    assert_eq!(one.code, 0, "{}", one.render());
    docker::load(&p.path().join("app.tar"));
    let said = docker::run(&[&format!("{}/bake-test/multi:1", m.registry.addr)]);
    assert_eq!(said, "x86_64\nbuilt on x86_64 for linux/amd64\nshared\n");
}

#[test]
fn oci_layout_holds_the_index() {
    let m = mirror();
    let p = project();
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", m.registry.addr);
    let build = m.bake(p.path(), home.path(), &["build", "--set", &reg, "-o", "type=oci-dir,dest=layout"]);
    assert_eq!(build.code, 0, "{}", build.render());
    let index: Value =
        serde_json::from_slice(&std::fs::read(p.path().join("layout/index.json")).expect("index.json")).expect("json");
    let entry = &index["manifests"][0];
    assert_eq!(entry["mediaType"], "application/vnd.oci.image.index.v1+json", "{index}");
    let layout = format!("oci:{}:1", p.path().join("layout").display());
    let raw: Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--raw", &layout]))).expect("json");
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw}");
    let arm64 = run(Command::new("skopeo").args(["inspect", "--override-arch", "arm64", &layout]));
    assert!(arm64.contains("\"Architecture\": \"arm64\""), "{arm64}");
}

#[test]
fn a_platform_the_base_lacks_is_named_with_the_ones_it_has() {
    let m = mirror();
    let p = project();
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", m.registry.addr);
    let run = m.bake(p.path(), home.path(), &["build", "--set", &reg, "--platform", "linux/s390x"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(run.stderr.contains("has no linux/s390x image"), "{}", run.render());
    // Pointed at the `from=` that asked for it.
    assert!(run.stderr.contains("build.kdl:") && run.stderr.contains("resolved for linux/s390x"), "{}", run.render());
    assert!(run.stderr.contains("linux/amd64, linux/arm64"), "{}", run.render());

    // A tag that names one arm64 image is not taken for amd64: its config
    // says what it is.
    let cache = fixtures();
    let publisher = tempfile::tempdir().expect("tempdir");
    let file = cache.join("busybox-arm64/build.kdl").display().to_string();
    let publish = bake(&root(), publisher.path(), &["-f", &file, "build", "--push", "--set", &reg]);
    assert_eq!(publish.code, 0, "{}", publish.render());
    std::fs::write(p.path().join("build.kdl"), "stage \"x\" from=\"busybox:arm64\" {\n    run \"true\"\n}\n")
        .expect("write");
    let wrong = m.bake(p.path(), home.path(), &["build"]);
    assert_eq!(wrong.code, 1, "{}", wrong.render());
    assert!(wrong.stderr.contains("is a linux/arm64 image, not linux/amd64"), "{}", wrong.render());
    let right = m.bake(p.path(), home.path(), &["build", "--platform", "linux/arm64", "--progress", "plain"]);
    assert_eq!(right.code, 0, "{}", right.render());
}

#[test]
fn graph_and_explain_show_platforms() {
    let p = project();
    let home = tempfile::tempdir().expect("tempdir");
    let graph = bake(p.path(), home.path(), &["graph", "--format", "json", "--set", "REGISTRY=r.example"]);
    assert_eq!(graph.code, 0, "{}", graph.render());
    let doc: Value = serde_json::from_str(&graph.stdout).expect("json");
    let node = |id: &str| {
        doc["nodes"].as_array().and_then(|a| a.iter().find(|n| n["id"] == id)).cloned().unwrap_or_else(|| {
            panic!("no {id} in {}", graph.stdout);
        })
    };
    // Pinned to the build machine: runs as linux/amd64 for either target.
    assert_eq!(node("cross[linux/arm64]/1")["platform"], "linux/amd64");
    // The step before the one that uses TARGETARCH is one node for both.
    assert_eq!(node("cross/0")["platform"], "linux/amd64");
    assert_eq!(node("cross[linux/arm64]/1")["inputs"], serde_json::json!(["cross/0"]));
    assert_eq!(node("base[linux/arm64]/0")["platform"], "linux/arm64");
    assert_eq!(node("image:app[linux/arm64]")["platform"], "linux/arm64");
    assert_eq!(node("pull:docker.io/library/busybox:latest [linux/arm64]")["platform"], "linux/arm64");
    assert_eq!(node("tools/0")["platform"], "linux/amd64");
    // --platform wins over the image's `platforms`.
    let one =
        bake(p.path(), home.path(), &["graph", "--format", "json", "--set", "REGISTRY=r", "--platform", "linux/arm64"]);
    assert_eq!(one.code, 0, "{}", one.render());
    let doc: Value = serde_json::from_str(&one.stdout).expect("json");
    let image = doc["nodes"].as_array().and_then(|a| a.iter().find(|n| n["id"] == "image:app")).cloned();
    assert_eq!(image.map(|n| n["platform"].clone()), Some(Value::from("linux/arm64")), "{}", one.stdout);
    let explain = bake(p.path(), home.path(), &["explain", "--set", "REGISTRY=r"]);
    assert_eq!(explain.code, 0, "{}", explain.render());
    assert!(explain.stdout.contains("base[linux/arm64]"), "{}", explain.render());
}

const GO: &str = r#"
arg "REGISTRY"

stage "build" from="golang:1.19" platform="${BUILDPLATFORM}" {
    workdir "/src"
    copy "go.mod" "main.go" to="./"
    env "CGO_ENABLED" "0"
    run "GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -o /out/hello ."
}

image "hello" from="scratch" {
    platforms "linux/amd64" "linux/arm64"
    copy "/out/hello" to="/hello" from="build"
    entrypoint "/hello"
    tag "${REGISTRY}/bake-test/hello-go:1"
}
"#;

const MAIN_GO: &str = r#"package main

import (
	"fmt"
	"runtime"
	"syscall"
)

func main() {
	var u syscall.Utsname
	machine := []byte{}
	if syscall.Uname(&u) == nil {
		for _, c := range u.Machine {
			if c == 0 {
				break
			}
			machine = append(machine, byte(c))
		}
	}
	fmt.Printf("hello from %s/%s on %s\n", runtime.GOOS, runtime.GOARCH, machine)
}
"#;

#[test]
fn a_go_service_cross_compiled_into_a_two_platform_scratch_index() {
    let m = mirror_of(&["golang"]);
    let p = tempfile::tempdir().expect("tempdir");
    std::fs::write(p.path().join("build.kdl"), GO).expect("write");
    std::fs::write(p.path().join("go.mod"), "module example.com/hello\n\ngo 1.19\n").expect("write");
    std::fs::write(p.path().join("main.go"), MAIN_GO).expect("write");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", m.registry.addr);
    let build = m.bake(p.path(), home.path(), &["build", "--progress", "json", "--push", "--set", &reg]);
    assert_eq!(build.code, 0, "{}", build.render());
    // The copy is shared; `go build` runs natively once per target.
    let steps: Vec<String> = started(&events(&build)).into_iter().filter(|n| n.starts_with("build")).collect();
    assert_eq!(steps, ["build/1", "build[linux/amd64]/3", "build[linux/arm64]/3"], "{}", build.render());

    let tag = format!("docker://{}/bake-test/hello-go:1", m.registry.addr);
    let raw: Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &tag])))
            .expect("index JSON");
    let archs: Vec<&str> = raw["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|d| d["platform"]["architecture"].as_str())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"], "{raw}");

    // The arm64 binary, copied out, runs under qemu and says so.
    let out = m.bake(
        p.path(),
        home.path(),
        &["build", "--set", &reg, "--platform", "linux/arm64", "-o", "type=local,dest=arm64"],
    );
    assert_eq!(out.code, 0, "{}", out.render());
    let said = run(Command::new("qemu-aarch64-static").arg(p.path().join("arm64/hello")));
    assert_eq!(said, "hello from linux/arm64 on aarch64\n");

    // The amd64 image runs under Docker.
    let one = m.bake(
        p.path(),
        home.path(),
        &["build", "--set", &reg, "--platform", "linux/amd64", "-o", "type=docker,dest=hello.tar"],
    );
    assert_eq!(one.code, 0, "{}", one.render());
    docker::load(&p.path().join("hello.tar"));
    let said = docker::run(&[&format!("{}/bake-test/hello-go:1", m.registry.addr)]);
    assert_eq!(said, "hello from linux/amd64 on x86_64\n");
}
