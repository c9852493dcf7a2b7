//! Attestations end to end: a two-platform image on Debian pushed with
//! provenance and an SBOM to a real registry (distribution 2.8, which has
//! no referrers API), found again through the referrers tag with skopeo,
//! the SBOM checked by spdx-tools (`pyspdxtools`, installed by
//! scripts/test.sh), and a second build from an empty store giving the
//! same attestations.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Run, bake_cmd, finish, root};
use crate::images::run;
use crate::registry::TestRegistry;

const BUILD: &str = r#"
arg "REGISTRY"
arg "GREETING" default="hello"

image "app" from="debian:bookworm-slim" {
    platforms "linux/amd64" "linux/arm64"
    copy "greeting.txt" to="/greeting.txt"
    tag "${REGISTRY}/bake-test/attest:1"
}
"#;

/// A registry serving `library/debian` as a two-platform index, and a
/// config file that makes it docker.io's mirror.
fn mirror() -> (TestRegistry, tempfile::NamedTempFile) {
    let cache = std::env::var_os("BAKE_FIXTURES").map_or_else(|| "/var/cache/bake-fixtures".into(), PathBuf::from);
    let script = root().join("scripts/fixtures.sh");
    run(Command::new(&script).args(["build", "debian", "debian-arm64"]).env("BAKE_FIXTURES", &cache));
    let registry = TestRegistry::start();
    {
        let _one = crate::examples::PUBLISH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        run(Command::new(&script)
            .arg("publish")
            .arg(&registry.addr)
            .arg("debian-platforms")
            .env("BAKE_FIXTURES", &cache)
            .env("BAKE", env!("CARGO_BIN_EXE_bake"))
            .env_remove("BAKE_CONFIG"));
    }
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), format!("registry \"docker.io\" {{\n    mirror \"{}\"\n}}\n", registry.addr))
        .expect("write");
    (registry, config)
}

/// The pyspdxtools of the venv scripts/test.sh makes.
fn pyspdxtools() -> PathBuf {
    let cache = std::env::var_os("BAKE_FIXTURES").map_or_else(|| "/var/cache/bake-fixtures".into(), PathBuf::from);
    cache.join("spdx-tools/bin/pyspdxtools")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// The platform manifests of the pushed index, by architecture.
fn platforms(registry: &TestRegistry) -> Vec<(String, String)> {
    let index = json(&registry.skopeo_raw("bake-test/attest:1").expect("the index"));
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|d| {
            let arch = d["platform"]["architecture"].as_str().unwrap_or_default().to_owned();
            (arch, d["digest"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The referrers index of `digest`, read through its fallback tag.
fn referrers(registry: &TestRegistry, digest: &str) -> Value {
    let tag = digest.replace(':', "-");
    json(&registry.skopeo_raw(&format!("bake-test/attest:{tag}")).unwrap_or_else(|| panic!("no tag {tag}")))
}

/// A blob's bytes, as JSON.
fn blob(registry: &TestRegistry, digest: &str) -> Value {
    let (status, body) =
        registry.http("GET", &format!("/v2/bake-test/attest/blobs/{digest}")).expect("the registry answers");
    assert_eq!(status, 200, "{body}");
    json(body.as_bytes())
}

fn build(registry: &TestRegistry, config: &tempfile::NamedTempFile, dir: &std::path::Path) -> Run {
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", registry.addr);
    finish(
        bake_cmd(dir, home.path()).env("BAKE_CONFIG", config.path()).args(["build", "--push", "--sbom", "--set", &reg]),
    )
}

#[test]
fn provenance_and_sbom_attached_to_each_platform_and_reproducible() {
    let (registry, config) = mirror();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("build.kdl"), BUILD).expect("write");
    std::fs::write(dir.path().join("greeting.txt"), "hello\n").expect("write");
    let first = build(&registry, &config, dir.path());
    assert_eq!(first.code, 0, "{}", first.render());

    let images = platforms(&registry);
    assert_eq!(images.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["amd64", "arm64"]);
    let mut seen = Vec::new();
    for (arch, digest) in &images {
        let index = referrers(&registry, digest);
        let listed = index["manifests"].as_array().expect("manifests").clone();
        let mut types: Vec<&str> = listed.iter().filter_map(|d| d["artifactType"].as_str()).collect();
        types.sort_unstable();
        assert_eq!(types, ["application/spdx+json", "application/vnd.in-toto+json"], "{index}");
        for d in &listed {
            let at = format!("bake-test/attest@{}", d["digest"].as_str().unwrap_or_default());
            let manifest = json(&registry.skopeo_raw(&at).expect("the artifact manifest"));
            assert_eq!(manifest["subject"]["digest"], digest.as_str(), "{manifest}");
            assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
            let doc = blob(&registry, manifest["layers"][0]["digest"].as_str().unwrap_or_default());
            if d["artifactType"] == "application/vnd.in-toto+json" {
                assert_eq!(doc["_type"], "https://in-toto.io/Statement/v1");
                assert_eq!(doc["predicateType"], "https://slsa.dev/provenance/v1");
                assert_eq!(format!("sha256:{}", doc["subject"][0]["digest"]["sha256"].as_str().unwrap_or("")), *digest);
                let deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"].to_string();
                assert!(deps.contains("docker-image://docker.io/library/debian:bookworm-slim"), "{deps}");
                assert!(deps.contains("file:build.kdl") && deps.contains("\"blake3\""), "{deps}");
                assert_eq!(doc["predicate"]["buildDefinition"]["externalParameters"]["args"]["GREETING"], "hello");
            } else {
                let packages = doc["packages"].as_array().expect("packages");
                let base = packages.iter().find(|p| p["name"] == "base-files").unwrap_or_else(|| panic!("{doc}"));
                let purl = base["externalRefs"][0]["referenceLocator"].as_str().unwrap_or_default();
                assert!(purl.ends_with(&format!("?arch={arch}")), "{purl}");
                assert!(packages.len() > 50, "{} packages", packages.len());
                let file = dir.path().join(format!("sbom-{arch}.json"));
                std::fs::write(&file, doc.to_string()).expect("write");
                run(Command::new(pyspdxtools()).arg("-i").arg(&file));
            }
        }
        seen.push(index);
    }

    // The same inputs from an empty store: the same attestations, so the
    // referrers tags list the same two manifests and nothing more.
    let again = build(&registry, &config, dir.path());
    assert_eq!(again.code, 0, "{}", again.render());
    assert_eq!(platforms(&registry), images);
    for ((_, digest), before) in images.iter().zip(&seen) {
        assert_eq!(referrers(&registry, digest), *before);
    }
}
