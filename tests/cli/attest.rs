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

/// A registry serving the fixture images `images` (`debian-platforms`:
/// `library/debian` as a two-platform index), and a config file that makes
/// it docker.io's mirror.
fn mirror(images: &[&str]) -> (TestRegistry, tempfile::NamedTempFile) {
    let cache = std::env::var_os("BAKE_FIXTURES").map_or_else(|| "/var/cache/bake-fixtures".into(), PathBuf::from);
    let script = root().join("scripts/fixtures.sh");
    run(Command::new(&script).args(["build", "debian", "debian-arm64"]).env("BAKE_FIXTURES", &cache));
    let registry = TestRegistry::start();
    {
        let _one = crate::examples::PUBLISH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        run(Command::new(&script)
            .arg("publish")
            .arg(&registry.addr)
            .args(images)
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
    let (registry, config) = mirror(&["debian-platforms"]);
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

const SIGNED: &str = r#"
arg "REGISTRY"
arg "TAG" default="1"

image "app" from="scratch" {
    platforms "linux/amd64" "linux/arm64"
    copy "greeting.txt" to="/greeting.txt"
    tag "${REGISTRY}/bake-test/signed:${TAG}"
}
"#;

/// A PEM ECDSA P-256 key pair made by openssl: (private, public).
fn key_pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&private));
    run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).arg("-out").arg(&public));
    (private, public)
}

/// Whether openssl verifies `signature` (base64 DER ECDSA) of `payload`
/// with the public key `public`.
fn openssl_verifies(dir: &std::path::Path, public: &std::path::Path, payload: &[u8], signature: &str) -> bool {
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD.decode(signature).expect("base64 signature");
    std::fs::write(dir.join("payload"), payload).expect("write");
    std::fs::write(dir.join("signature.der"), der).expect("write");
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(dir.join("signature.der"))
        .arg(dir.join("payload"))
        .output()
        .expect("openssl")
        .status
        .success()
}

#[test]
fn signed_index_and_platforms_verified_with_the_key_and_refused_with_another() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("build.kdl"), SIGNED).expect("write");
    std::fs::write(dir.path().join("greeting.txt"), "hello\n").expect("write");
    let (private, public) = key_pair(dir.path(), "release");
    let (_, other) = key_pair(dir.path(), "other");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", registry.addr);
    let key = format!("key={}", private.display());
    let signed = finish(bake_cmd(dir.path(), home.path()).args(["build", "--push", "--sign", &key, "--set", &reg]));
    assert_eq!(signed.code, 0, "{}", signed.render());
    // Another image (another greeting), pushed without --sign.
    std::fs::write(dir.path().join("greeting.txt"), "hello, unsigned\n").expect("write");
    let unsigned = finish(bake_cmd(dir.path(), home.path()).args(["build", "--push", "--set", &reg, "--set", "TAG=2"]));
    std::fs::write(dir.path().join("greeting.txt"), "hello\n").expect("write");
    assert_eq!(unsigned.code, 0, "{}", unsigned.render());

    // The index and each platform's manifest carry a signature under the
    // tag containers/image reads sigstore attachments from. Debian's skopeo
    // 1.9 reads them but cannot check them ("Debian-local change: sigstore
    // disabled"), so openssl checks the signature and this test the payload.
    let index = json(&registry.skopeo_raw("bake-test/signed:1").expect("the index"));
    let mut digests = vec![registry.skopeo_digest("bake-test/signed:1").expect("digest")];
    digests.extend(
        index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .filter_map(|d| d["digest"].as_str())
            .map(str::to_owned),
    );
    assert_eq!(digests.len(), 3, "{index}");
    for digest in &digests {
        let at = format!("bake-test/signed:{}.sig", digest.replace(':', "-"));
        let sig = json(&registry.skopeo_raw(&at).unwrap_or_else(|| panic!("no {at}")));
        let layers = sig["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{sig}");
        let layer = &layers[0];
        assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json", "{sig}");
        let signature = layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().expect("signature");
        let (status, payload) = registry
            .http("GET", &format!("/v2/bake-test/signed/blobs/{}", layer["digest"].as_str().unwrap_or_default()))
            .expect("the registry answers");
        assert_eq!(status, 200);
        let doc = json(payload.as_bytes());
        assert_eq!(doc["critical"]["image"]["docker-manifest-digest"], digest.as_str());
        assert_eq!(doc["critical"]["identity"]["docker-reference"], format!("{}/bake-test/signed:1", registry.addr));
        assert_eq!(doc["critical"]["type"], "cosign container image signature");
        assert!(openssl_verifies(dir.path(), &public, payload.as_bytes(), signature), "{sig}");
        assert!(!openssl_verifies(dir.path(), &other, payload.as_bytes(), signature), "{sig}");
    }
    // The unsigned build has no signature tag.
    let unsigned_digest = registry.skopeo_digest("bake-test/signed:2").expect("digest");
    assert!(registry.skopeo_raw(&format!("bake-test/signed:{}.sig", unsigned_digest.replace(':', "-"))).is_none());
    // Signing again adds a signature beside the first.
    let again = finish(bake_cmd(dir.path(), home.path()).args(["build", "--push", "--sign", &key, "--set", &reg]));
    assert_eq!(again.code, 0, "{}", again.render());
    let at = format!("bake-test/signed:{}.sig", digests[0].replace(':', "-"));
    let sig = json(&registry.skopeo_raw(&at).expect("sig"));
    assert_eq!(sig["layers"].as_array().map(Vec::len), Some(2), "{sig}");
}

#[test]
fn a_key_that_cannot_sign_fails_the_push_before_anything_is_published() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("build.kdl"), SIGNED).expect("write");
    std::fs::write(dir.path().join("greeting.txt"), "hello\n").expect("write");
    let (_, public) = key_pair(dir.path(), "release");
    let home = tempfile::tempdir().expect("tempdir");
    let reg = format!("REGISTRY={}", registry.addr);
    let key = format!("key={}", public.display());
    let out = finish(bake_cmd(dir.path(), home.path()).args(["build", "--push", "--sign", &key, "--set", &reg]));
    assert_eq!(out.code, 1, "{}", out.render());
    assert!(out.stderr.contains("bake::sign::key") && out.stderr.contains("`PUBLIC KEY`"), "{}", out.render());
    assert!(registry.tags("bake-test/signed").is_empty());
}

/// A Go service with a dependency on a module of its own (a local
/// replacement: the tests have no module proxy).
const GO: &str = r#"
arg "REGISTRY"

stage "build" from="golang:1.19" {
    workdir "/src"
    copy "." to="./"
    env "CGO_ENABLED" "0"
    run "go build -o /out/hello ."
}

image "hello" from="scratch" {
    copy "/out/hello" to="/hello" from="build"
    entrypoint "/hello"
    tag "${REGISTRY}/bake-test/attest:go"
}
"#;

#[test]
fn the_sbom_of_a_go_binary_lists_its_modules() {
    let (registry, config) = mirror(&["golang"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("build.kdl"), GO).expect("write");
    std::fs::write(
        p.join("go.mod"),
        "module example.com/hello\n\ngo 1.19\n\nrequire example.com/greet v0.3.0\n\nreplace example.com/greet => ./greet\n",
    )
    .expect("write");
    std::fs::write(
        p.join("main.go"),
        "package main\n\nimport \"example.com/greet\"\n\nfunc main() { println(greet.Hello()) }\n",
    )
    .expect("write");
    std::fs::create_dir(p.join("greet")).expect("mkdir");
    std::fs::write(p.join("greet/go.mod"), "module example.com/greet\n\ngo 1.19\n").expect("write");
    std::fs::write(p.join("greet/greet.go"), "package greet\n\nfunc Hello() string { return \"hello\" }\n")
        .expect("write");
    let built = build(&registry, &config, p);
    assert_eq!(built.code, 0, "{}", built.render());

    let digest = registry.skopeo_digest("bake-test/attest:go").expect("the image");
    let index = referrers(&registry, &digest);
    let sbom = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|d| d["artifactType"] == "application/spdx+json")
        .unwrap_or_else(|| panic!("no SBOM: {index}"));
    let manifest = json(
        &registry.skopeo_raw(&format!("bake-test/attest@{}", sbom["digest"].as_str().unwrap_or(""))).expect("manifest"),
    );
    let doc = blob(&registry, manifest["layers"][0]["digest"].as_str().unwrap_or_default());
    let mut modules: Vec<(String, String)> = doc["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| {
            let purl = p["externalRefs"][0]["referenceLocator"].as_str()?;
            purl.starts_with("pkg:golang/")
                .then(|| (purl.to_owned(), p["sourceInfo"].as_str().unwrap_or("").to_owned()))
        })
        .collect();
    modules.sort();
    assert_eq!(
        modules,
        [
            ("pkg:golang/example.com/greet@v0.3.0".to_owned(), "found in /hello".to_owned()),
            ("pkg:golang/example.com/hello@%28devel%29".to_owned(), "found in /hello".to_owned()),
        ],
        "{doc}"
    );
    let file = p.join("sbom.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    run(Command::new(pyspdxtools()).arg("-i").arg(&file));
}
